"""What a run leaves behind: run_config.json, rotated checkpoints (--keep_last_n), the learning
rate and time left in metrics.jsonl and after the original fields of the log line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib.checkpoint import prune_checkpoints
from bertlib.records import RUN_CONFIG_FILE, format_eta, read_run_config, write_run_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num_hidden_layers", "1", "--num_attention_heads", "2", "--hidden_size_per_head", "16",
        "--batch_size_per_device", "4", "--no_progress", "--device", "cpu"]


def pretrain(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "bertlib.cli.pretrain", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def fake_checkpoints(save_dir: Path, steps, latest):
    for n in steps:
        (save_dir / f"step_{n}" / "model").mkdir(parents=True)
    (save_dir / "latest").write_text(f"step_{latest}\n")


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"),
                                           (90061, "1d 1:01:01"), (-3, "0:00:00")])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_run_config_records_options_versions_world_and_start(tmp_path):
    from dataclasses import dataclass

    import bertlib

    @dataclass
    class Options:
        learning_rate: float = 1e-3
        data_dir: str | None = None

    path = write_run_config(tmp_path / "run", "pretraining", Options(), 4, model_config={"hidden_size": 8})
    assert path == tmp_path / "run" / RUN_CONFIG_FILE
    record = read_run_config(tmp_path / "run")
    assert record["options"] == {"learning_rate": 1e-3, "data_dir": None}
    assert record["world_size"] == 4 and record["task"] == "pretraining"
    assert record["versions"]["bertlib"] == bertlib.__version__
    assert record["versions"]["oneflow"] == "0.9.0"
    assert record["start_time"].endswith("Z") and record["start_timestamp"] > 0
    assert record["model_config"] == {"hidden_size": 8}
    assert [p.name for p in (tmp_path / "run").iterdir()] == [RUN_CONFIG_FILE]  # no temp left


def test_prune_keeps_the_newest_n(tmp_path):
    fake_checkpoints(tmp_path, [1, 2, 3, 10, 20], latest=20)
    removed = prune_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["step_1", "step_2", "step_3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_10", "step_20"]


def test_prune_never_deletes_what_latest_names(tmp_path):
    """A run resumed from step_2 saves step_3 while an abandoned step_9 has the highest number."""
    fake_checkpoints(tmp_path, [1, 2, 3, 9], latest=3)
    prune_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_3", "step_9"]
    (tmp_path / "latest").write_text("step_9\n")
    prune_checkpoints(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_9"]


def test_prune_ignores_other_names_and_refuses_zero(tmp_path):
    fake_checkpoints(tmp_path, [1, 2], latest=2)
    (tmp_path / ".step_3.tmp").mkdir()
    (tmp_path / "step_best").mkdir()
    assert prune_checkpoints(tmp_path, 5) == []
    with pytest.raises(ValueError, match="keep_last_n must be >= 1"):
        prune_checkpoints(tmp_path, 0)


def test_pretrain_run_records(tmp_path):
    """One real run: run_config.json, rotation by --keep_last_n, eta_seconds and the log line."""
    ckpts = tmp_path / "ckpt"
    proc = pretrain("--iter_num", 4, "--loss_print_every_n_iter", 2, "--model_save_dir", ckpts,
                    "--model_save_every_n_iter", 1, "--keep_last_n", 2, "--log_dir", tmp_path / "log",
                    *TINY)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_3", "step_4"]
    assert (ckpts / "latest").read_text().strip() == "step_4"
    assert "Removed checkpoint" in proc.stdout

    record = read_run_config(tmp_path / "log")
    assert record["task"] == "pretraining" and record["world_size"] == 1
    assert record["options"]["keep_last_n"] == 2
    assert record["options"]["seq_length"] == 128  # resolved, not left as None
    assert record["options"]["vocab_file"]  # the default data's vocab
    assert record["model_config"]["num_hidden_layers"] == 1
    assert record["command"][0] in ("pretrain.py", "bert-pretrain")

    metrics = [json.loads(line) for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [1, 3]
    assert metrics[0]["eta_seconds"] > 0 and metrics[1]["eta_seconds"] == 0
    assert all(m["learning_rate"] > 0 for m in metrics)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iter ")]
    assert lines[0].split(", lr: ")[1].startswith(f"{metrics[0]['learning_rate']:.2e}, eta: 0:00:0")


def test_keep_last_n_below_one_is_a_usage_error(tmp_path):
    proc = pretrain("--keep_last_n", 0, "--iter_num", 1, "--log_dir", tmp_path / "log",
                    "--model_save_dir", tmp_path / "ckpt", *TINY, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bert-pretrain: error: --keep_last_n must be >= 1 (got 0)"


def test_squad_log_line_and_options():
    from bertlib.tasks.squad import SquadOptions, UsageError, log_line

    line = log_line({"iter": 4, "loss": 1.5, "learning_rate": 3e-5, "sec_per_batch": 0.5,
                     "sentences_per_sec": 8.0, "eta_seconds": 61})
    assert line == ("iter 4, loss: 1.500, lr: 3.00e-05, speed: 0.500(sec/batch), "
                    "8.000(sentences/sec), eta: 0:01:01")
    with pytest.raises(UsageError, match="--keep_last_n must be >= 1"):
        SquadOptions(do_eval=True, predict_file=__file__, keep_last_n=0).check()
