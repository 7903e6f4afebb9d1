"""bert-pretrain / bert-squad as a user meets the reliability checks: everything refused here is
refused in the launching process, before any rank starts, as one line on stderr and exit code 2."""
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the default (embedded) corpus at a short sequence length: built once in a few seconds, then cached
TINY = ["--num_hidden_layers", "1", "--num_attention_heads", "2", "--hidden_size_per_head", "16",
        "--batch_size_per_device", "4", "--seq_length", "32", "--max_predictions_per_seq", "5",
        "--device", "cpu", "--no_progress", "--loss_print_every_n_iter", "1", "--warmup_batches", "1"]


def pretrain(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "bertlib.cli.pretrain", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def refused(proc, text):
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bert-pretrain: error: "), proc.stderr
    assert text in lines[0], lines[0]
    assert "iter 0," not in proc.stdout   # nothing trained


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run that saved step_2 and step_4."""
    run = tmp_path_factory.mktemp("finished")
    proc = pretrain("--iter_num", 4, "--model_save_dir", run / "ck", "--model_save_every_n_iter", 2,
                    "--log_dir", run / "log", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_iter_num_not_beyond_the_checkpoint_is_an_error(finished, tmp_path):
    proc = pretrain("--iter_num", 4, "--model_load_dir", finished / "ck", "--save_last_snapshot",
                    "--model_save_dir", tmp_path / "ck", "--log_dir", tmp_path, *TINY)
    refused(proc, f"--iter_num 4 is not beyond the step of checkpoint {finished / 'ck' / 'step_4'} (4)")


def test_other_processes_or_batch_are_refused(finished, tmp_path):
    common = ["--iter_num", 6, "--model_load_dir", finished / "ck", "--log_dir", tmp_path, *TINY]
    refused(pretrain(*common, "--gpu_num_per_node", 2, timeout=60),
            "was made with processes 1, this run has 2")
    refused(pretrain(*common, "--num_accumulation_steps", 2, timeout=60),
            "was made with global batch 4, this run has 8")
    refused(pretrain(*common, "--mode", "graph", timeout=60), "saved in --mode eager")


def test_incomplete_or_malformed_checkpoint_is_refused(finished, tmp_path):
    broken = tmp_path / "ck"
    shutil.copytree(finished / "ck", broken)
    state = broken / "step_4" / "trainer_state.json"
    fields = json.loads(state.read_text())
    del fields["consumed_batches"]
    state.write_text(json.dumps(fields))
    common = ["--iter_num", 6, "--model_load_dir", broken, "--log_dir", tmp_path, *TINY]
    refused(pretrain(*common, timeout=60), f"{state} lacks the field 'consumed_batches'")
    shutil.rmtree(broken / "step_4")           # latest now dangles: the newest complete one is used
    proc = pretrain(*common, "--iter_num", 3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "latest names step_4, which is missing or incomplete; resuming from step_2" in proc.stderr
    assert f"Resumed from {broken / 'step_2'} at iter 2" in proc.stdout


def test_another_schedule_is_accepted_with_its_consequence(finished, tmp_path):
    proc = pretrain("--iter_num", 8, "--warmup_batches", 3, "--model_load_dir", finished / "ck",
                    "--log_dir", tmp_path, *TINY[:-2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: resuming checkpoint" in proc.stdout
    assert "another schedule (iter_num 4 -> 8, warmup_batches 1 -> 3)" in proc.stdout


def test_metrics_are_cut_back_to_the_resumed_step(finished, tmp_path):
    """A run killed after step 4 had logged iters 0-3 (and saved step_2): resumed from step_2 the
    log holds each iteration once, the resumed ones new."""
    log = tmp_path / "log"
    shutil.copytree(finished / "log", log)
    before = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in before] == [0, 1, 2, 3]
    proc = pretrain("--iter_num", 6, "--model_load_dir", finished / "ck" / "step_2", "--log_dir", log, *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = [json.loads(line) for line in (log / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in after] == [0, 1, 2, 3, 4, 5]
    assert after[:2] == before[:2] and after[2]["time"] > before[3]["time"]


def test_a_finished_runs_directory_needs_the_opt_in(finished, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(finished / "ck", ck)
    (ck / ".step_6.tmp").mkdir()                 # debris of a crashed save
    args = ["--iter_num", 2, "--model_save_dir", ck, "--save_last_snapshot", "--log_dir", tmp_path, *TINY]
    refused(pretrain(*args, timeout=60), f"--model_save_dir {ck} holds an earlier run's checkpoints "
                                         "(step_4, step_2, latest)")
    proc = pretrain(*args, "--overwrite_output_dir")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_2"]
    assert "--overwrite_output_dir" in " ".join(pretrain("--help", timeout=60).stdout.split())


def test_unusable_directories_and_bad_values_are_refused_before_launch(tmp_path):
    (tmp_path / "file").write_text("")
    two = ["--gpu_num_per_node", 2]   # would launch 2 ranks: refused before any starts
    refused(pretrain("--model_save_dir", tmp_path / "file", "--save_last_snapshot", "--log_dir", tmp_path,
                     *two, *TINY, timeout=60), f"--model_save_dir {tmp_path / 'file'} is a file")
    refused(pretrain("--log_dir", tmp_path / "file", *two, *TINY, timeout=60),
            f"--log_dir {tmp_path / 'file'} is a file, not a directory")
    for flag, value, text in (("--model_save_every_n_iter", -1, "--model_save_every_n_iter must be >= 0"),
                              ("--learning_rate", "nan", "--learning_rate must be a finite number > 0")):
        refused(pretrain(flag, value, "--log_dir", tmp_path, *two, *TINY, timeout=60), text)


def test_bad_values_are_refused_by_the_tasks_too():
    """Scripts and notebooks get the checks of the commands (tests/test_checkpoint.py: the trainer's)."""
    from bertlib.tasks import pretraining, squad

    for field, value, text in (("learning_rate", -1.0, "--learning_rate must be a finite number > 0"),
                               ("model_save_every_n_iter", -1, "--model_save_every_n_iter must be >= 0"),
                               ("hidden_dropout_prob", 1.5, "--hidden_dropout_prob must be in [0, 1)")):
        with pytest.raises(ValueError, match=re.escape(text)):
            pretraining.PretrainingOptions(**{field: value}).check()
    message = "--learning_rate must be a finite number > 0 (got nan)"
    with pytest.raises(squad.UsageError, match=re.escape(message)):
        squad.SquadOptions(do_eval=True, predict_file=__file__, learning_rate=float("nan")).check()


def test_a_live_run_holds_its_directories(tmp_path):
    log = tmp_path / "log"
    live = subprocess.Popen([sys.executable, "-m", "bertlib.cli.pretrain", "--iter_num", "100000",
                             "--log_dir", str(log), "--model_save_dir", str(tmp_path / "ck"),
                             "--model_save_every_n_iter", "1000", *TINY],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in live.stdout:
            if line.startswith("iter 1,"):
                break
        refused(pretrain("--log_dir", log, "--model_save_dir", tmp_path / "other", *TINY, timeout=60),
                f"--log_dir {log} is in use by a live run (pid {live.pid})")
        refused(pretrain("--log_dir", tmp_path / "other", "--model_save_dir", tmp_path / "ck",
                         "--save_last_snapshot", *TINY, timeout=60),
                f"--model_save_dir {tmp_path / 'ck'} is in use by a live run (pid {live.pid})")
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    proc = pretrain("--iter_num", 1, "--log_dir", log, *TINY)   # the lock died with it
    assert proc.returncode == 0, proc.stderr[-2000:]


SQUAD_TINY = ["--max_seq_length", "64", "--doc_stride", "32", "--max_query_length", "16",
              "--eval_batch_size_per_device", "16", "--device", "cpu", "--no_progress"]


def test_squad_output_dir_of_a_finished_run_needs_the_opt_in(tmp_path):
    from bertlib.config import BertConfig
    from bertlib.datasets import find_data
    from bertlib.model import BertForQuestionAnswering

    data = find_data()
    model = tmp_path / "model"
    BertForQuestionAnswering(BertConfig.tiny(vocab_size=30522, num_hidden_layers=1)).save_pretrained(model)
    args = ["--do_eval", "--init_checkpoint", model, "--vocab_file", data.vocab, "--predict_file",
            data.squad_dev, "--max_eval_examples", 2, "--output_dir", tmp_path / "out", *SQUAD_TINY]
    squad = [sys.executable, "-m", "bertlib.cli.squad"]
    proc = subprocess.run([*squad, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([*squad, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"bert-squad: error: --output_dir {tmp_path / 'out'} holds a finished "
                                   "run's results (eval_results.json, predictions.json): pass "
                                   "--overwrite_output_dir to replace them, or choose another directory")
    proc = subprocess.run([*squad, *map(str, args), "--overwrite_output_dir"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
