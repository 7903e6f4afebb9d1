"""The training loop: exact resume (1 and 2 processes), fail-fast on any rank's failure, checkpoints."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ("import sys; from bertlib.launch import run_launcher; "
          "sys.exit(run_launcher('tests.helpers.syn_train', sys.argv[1:], nproc_per_node=2))")


def run_job(args, nproc=1, timeout=180):
    cmd = [sys.executable, "-m", "tests.helpers.syn_train", *args] if nproc == 1 else \
          [sys.executable, "-c", LAUNCH, *args]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - start


def losses(path):
    return [(r["iter"], round(r["total_loss"], 6), round(r["mlm_loss"], 6), round(r["nsp_loss"], 6))
            for r in json.loads(Path(path).read_text())]


@pytest.mark.parametrize("mode,nproc", [("eager", 1), ("eager", 2), ("graph", 1), ("graph", 2)])
def test_resume_is_exact(tmp_path, mode, nproc):
    """N + N steps with a resume between print the losses of 2N, dropout on; in graph mode the
    optimizer moments, the compiled schedule's step and the dropout stream are carried over."""
    full, first, second = tmp_path / "full.json", tmp_path / "a.json", tmp_path / "b.json"
    # the uninterrupted run saves at the same step: a graph's dropout stream restarts at a save
    proc, _ = run_job(["--iters", "6", "--mode", mode, "--save_dir", str(tmp_path / "full_ck"),
                       "--save_every", "3", "--out", str(full)], nproc)
    assert proc.returncode == 0, proc.stderr
    proc, _ = run_job(["--iters", "3", "--mode", mode, "--save_dir", str(tmp_path / "ck"),
                       "--save_every", "3", "--out", str(first)], nproc)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step_3"
    state = json.loads((tmp_path / "ck" / "step_3" / "trainer_state.json").read_text())
    assert state["mode"] == mode and state["world_size"] == nproc and state["step"] == 3
    proc, _ = run_job(["--iters", "6", "--mode", mode, "--load", str(tmp_path / "ck"),
                       "--out", str(second)], nproc)
    assert proc.returncode == 0, proc.stderr
    assert "Resumed from" in proc.stdout
    assert "note:" not in proc.stdout  # warm-up 2 < 3: the first 3 learning rates are the 6-step run's
    assert losses(first) + losses(second) == losses(full)
    # and training did something: the loss is not constant
    assert len({l[1] for l in losses(full)}) > 1


def test_two_processes_average_across_ranks(tmp_path):
    """With 2 ranks each rank sees its own data, so the logged loss differs from 1 rank's."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert run_job(["--iters", "2", "--out", str(one)], 1)[0].returncode == 0
    proc, _ = run_job(["--iters", "2", "--out", str(two)], 2)
    assert proc.returncode == 0, proc.stderr
    first_one, first_two = losses(one)[0], losses(two)[0]
    assert first_one != first_two
    assert json.loads(two.read_text())[0]["sentences_per_sec"] > 0


def test_accumulation_across_processes_is_the_same_update(tmp_path):
    """2 ranks x 2 micro-batches of 2 (one all-reduce per step) = 2 ranks x 1 batch of 4."""
    whole, halves = tmp_path / "whole.json", tmp_path / "halves.json"
    proc, _ = run_job(["--iters", "4", "--no_dropout", "--out", str(whole)], 2)
    assert proc.returncode == 0, proc.stderr
    proc, _ = run_job(["--iters", "4", "--no_dropout", "--accumulation", "2", "--out", str(halves)], 2)
    assert proc.returncode == 0, proc.stderr
    a, b = losses(whole), losses(halves)
    assert [r[0] for r in a] == [r[0] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        assert ra[1:] == pytest.approx(rb[1:], abs=2e-5), (ra, rb)
    assert a[0][1] != a[-1][1]   # the steps did change the model: equal losses are not trivially equal


def _leftover(marker):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            found.append(cmd)
    return found


@pytest.mark.parametrize("kill", [False, True], ids=["exception", "killed"])
def test_a_failing_rank_ends_the_whole_job(tmp_path, kill):
    marker = str(tmp_path / "never-written.json")
    args = ["--iters", "50", "--fail_rank", "1", "--fail_step", "2", "--out", marker]
    proc, seconds = run_job(args + (["--kill"] if kill else []), nproc=2, timeout=120)
    assert proc.returncode != 0
    assert seconds < 60, f"job took {seconds:.0f}s to fail"
    if not kill:
        assert "[rank 1] failed" in proc.stderr and "synthetic failure at batch 2" in proc.stderr
    time.sleep(1)
    assert _leftover(marker) == []


def test_graph_mode_trains(tmp_path):
    out = tmp_path / "g.json"
    proc, _ = run_job(["--iters", "4", "--mode", "graph", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert len(losses(out)) == 4


def test_graph_checkpoint_is_refused_in_eager_mode(tmp_path):
    """The optimizer state of a graph checkpoint is the graph's: another mode is told, not crashed."""
    proc, _ = run_job(["--iters", "2", "--mode", "graph", "--save_dir", str(tmp_path / "ck"),
                       "--save_every", "2"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step_2"]
    proc, _ = run_job(["--iters", "4", "--load", str(tmp_path / "ck")])
    assert proc.returncode != 0
    assert "saved in --mode graph" in proc.stderr and "resume it with --mode graph" in proc.stderr


def test_bad_checkpoints_give_clear_errors(tmp_path):
    from bertlib.checkpoint import CheckpointError, load_checkpoint
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining
    from bertlib.optim import build_optimizer

    config = BertConfig.tiny(vocab_size=300, hidden_size=32, intermediate_size=64,
                             max_position_embeddings=24)
    model = BertForPreTraining(config)
    opt = build_optimizer(model, "adamw", 1e-3, 0.01)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", model, opt, config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "empty", model, opt, config)

    proc, _ = run_job(["--iters", "2", "--save_dir", str(tmp_path / "ck"), "--save_every", "2"])
    assert proc.returncode == 0, proc.stderr
    other = BertForPreTraining(BertConfig.tiny(vocab_size=300, hidden_size=64, intermediate_size=64,
                                               max_position_embeddings=24))
    with pytest.raises(CheckpointError, match="different model: hidden_size"):
        load_checkpoint(tmp_path / "ck", other, build_optimizer(other, "adamw", 1e-3, 0.01),
                        other.config)
    load_checkpoint(tmp_path / "ck", model, opt, config)  # the good one loads
    (tmp_path / "ck" / "step_2" / "model" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete: missing model/model.safetensors"):
        load_checkpoint(tmp_path / "ck", model, opt, config)


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from bertlib import checkpoint
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining
    from bertlib.optim import build_optimizer

    model = BertForPreTraining(BertConfig.tiny(vocab_size=300, hidden_size=32, intermediate_size=64))
    opt = build_optimizer(model, "adamw", 1e-3, 0.01)
    checkpoint.save_checkpoint(tmp_path, 1, model, opt, {"consumed_batches": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(tmp_path, 2, model, opt, {"consumed_batches": 2})
    assert (tmp_path / "latest").read_text().strip() == "step_1"
    assert not (tmp_path / "step_2").exists()
    assert checkpoint.resolve_checkpoint(tmp_path) == tmp_path / "step_1"


def test_fp16_on_cpu_is_refused():
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining
    from bertlib.trainer import Trainer, TrainOptions

    model = BertForPreTraining(BertConfig.tiny(vocab_size=300))
    with pytest.raises(ValueError, match="--use_fp16 needs a CUDA device"):
        Trainer(model, None, None, TrainOptions(iter_num=1, batch_size_per_device=1, use_fp16=True),
                device="cpu")


def test_terminating_the_launcher_ends_every_rank(tmp_path):
    """`kill <pid>` of the command a user started must not leave its ranks training on."""
    import signal

    marker = str(tmp_path / "terminated.json")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "--iters", "100000", "--out", marker],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until the ranks really train
        if line.startswith("iter 2,"):
            break
    assert len(_leftover(marker)) >= 2, "ranks should be running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    time.sleep(1)
    assert _leftover(marker) == []
