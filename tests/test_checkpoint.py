"""Checkpoints and run directories, in-process: well-formed states, dangling `latest`, fsync, disk
full, the resume checks, metrics.jsonl cut back, directory locks, opt-in reuse and debris."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib import checkpoint, rundirs
from bertlib.checkpoint import STATE_FIELDS, CheckpointError
from bertlib.rundirs import RunDirError

ROOT = Path(__file__).resolve().parents[1]
STATE = {"consumed_batches": 3, "seed": 1, "world_size": 1, "global_batch": 4,
         "batch_size_per_device": 4, "mode": "eager", "iter_num": 6, "warmup_batches": 2,
         "learning_rate": 1e-3, "args": {}}


@pytest.fixture(scope="module")
def tiny():
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining
    from bertlib.optim import build_optimizer

    model = BertForPreTraining(BertConfig.tiny(vocab_size=300, hidden_size=32, intermediate_size=64,
                                               max_position_embeddings=24))
    return model, build_optimizer(model, "adamw", 1e-3, 0.01)


def save(tiny, save_dir, step, **state):
    return checkpoint.save_checkpoint(save_dir, step, *tiny, {**STATE, **state})


def test_every_field_of_trainer_state_is_checked(tiny, tmp_path):
    ckpt = save(tiny, tmp_path, 3)
    assert checkpoint.read_checkpoint(tmp_path)[1]["step"] == 3
    state_path = ckpt / "trainer_state.json"
    good = json.loads(state_path.read_text())
    assert set(STATE_FIELDS) <= set(good)
    for field in STATE_FIELDS:
        state_path.write_text(json.dumps({k: v for k, v in good.items() if k != field}))
        with pytest.raises(CheckpointError) as err:
            checkpoint.read_checkpoint(tmp_path)
        assert str(state_path) in str(err.value) and f"lacks the field '{field}'" in str(err.value)
    state_path.write_text(json.dumps({**good, "world_size": "2"}))
    with pytest.raises(CheckpointError, match="field 'world_size' is '2', expected an integer"):
        checkpoint.read_checkpoint(tmp_path)
    state_path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        checkpoint.read_checkpoint(tmp_path)


def test_dangling_latest_falls_back_to_the_newest_complete_step(tiny, tmp_path, capsys):
    save(tiny, tmp_path, 1)
    save(tiny, tmp_path, 2)
    (tmp_path / "latest").write_text("step_3\n")           # a checkpoint deleted by hand
    assert checkpoint.resolve_checkpoint(tmp_path) == tmp_path / "step_2"
    assert "names step_3, which is missing or incomplete; resuming from step_2" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "step_2" / "optimizer")       # and the next one incomplete
    (tmp_path / "latest").write_text("step_2\n")
    assert checkpoint.read_checkpoint(tmp_path)[0] == tmp_path / "step_1"
    shutil.rmtree(tmp_path / "step_1")
    with pytest.raises(CheckpointError, match="incomplete: missing optimizer"):
        checkpoint.read_checkpoint(tmp_path)                # nothing to fall back to: say what lacks


def test_save_fsyncs_files_and_directories(tiny, tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save(tiny, tmp_path, 1)
    save(tiny, tmp_path, 1)   # re-saving a step replaces it, synced too
    names = {str(Path(p).relative_to(tmp_path)) if p.startswith(str(tmp_path)) else p for p in synced}
    for expected in (".step_1.tmp/trainer_state.json", ".step_1.tmp/model/model.safetensors",
                     ".step_1.tmp/model", ".step_1.tmp/optimizer", ".step_1.tmp", ".latest.tmp", "."):
        assert expected in names, (expected, sorted(names))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1"]


def test_disk_full_while_saving_leaves_no_debris(tiny, tmp_path, monkeypatch):
    save(tiny, tmp_path, 1)
    flow = checkpoint.import_oneflow()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(flow, "save", full)
    with pytest.raises(OSError, match="No space left"):
        save(tiny, tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_1"]
    assert (tmp_path / "latest").read_text().strip() == "step_1"


def _check(state, **run):
    values = dict(iter_num=6, world_size=1, global_batch=4, batch_size_per_device=4, mode="eager",
                  warmup_batches=2, learning_rate=1e-3)
    return checkpoint.check_resume(Path("ck/step_3"), {**STATE, "step": 3, **state}, **{**values, **run})


def test_resume_compatibility():
    assert _check({}) == []
    assert _check({"iter_num": 3}) == []   # 3 + 3 of a 6-step run: the same first 3 learning rates
    for run, message in (({"iter_num": 3}, "--iter_num 3 is not beyond the step of checkpoint ck/step_3 (3)"),
                         ({"world_size": 2}, "made with processes 1, this run has 2"),
                         ({"global_batch": 8, "batch_size_per_device": 8}, "global batch 4, this run has 8"),
                         ({"batch_size_per_device": 2}, "--batch_size_per_device 4, this run has 2"),
                         ({"mode": "graph"}, "saved in --mode eager")):
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _check({}, **run)
    notes = _check({"iter_num": 100, "step": 5})    # its steps 3 and 4 decayed towards 100, not 6
    assert len(notes) == 1 and "another schedule (iter_num 100 -> 6): its first 5 steps" in notes[0]
    assert "another schedule (learning_rate 0.002 -> 0.001)" in _check({"learning_rate": 2e-3})[0]


def test_metrics_cut_back_to_the_resumed_step(tmp_path):
    from bertlib.trainer import cut_metrics, read_metrics

    lines = [json.dumps({"iter": i, "loss": 1.0}) for i in range(6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"iter": 6, "lo')  # killed mid-line
    assert cut_metrics(tmp_path, 3) == 4
    assert [r["iter"] for r in read_metrics(tmp_path)] == [0, 1, 2]


def test_bad_training_values_are_refused():
    from bertlib.trainer import TrainOptions, check_train_values

    positive = "--learning_rate must be a finite number > 0"
    for field, value, message in (("learning_rate", float("nan"), positive),
                                  ("learning_rate", -1.0, positive),
                                  ("learning_rate", float("inf"), "--learning_rate"),
                                  ("model_save_every_n_iter", -1, "--model_save_every_n_iter must be >= 0"),
                                  ("weight_decay_rate", float("nan"), "--weight_decay_rate"),
                                  ("seed", -3, "--seed must be >= 0")):
        with pytest.raises(ValueError, match=message):
            check_train_values(TrainOptions(iter_num=1, batch_size_per_device=1, **{field: value}))


# ------------------------------------------------------------------------------- run directories
HOLD = ("import sys, time; from bertlib.rundirs import DirLock; lock = DirLock(sys.argv[1], '--x'); "
        "print('held', flush=True); time.sleep(60)")


def test_a_live_run_holds_its_directory_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"--model_save_dir {tmp_path} is in use by a live run "
                                              f"\\(pid {holder.pid}\\)"):
            rundirs.claim_save_dir(tmp_path)
    finally:
        holder.kill()   # even kill -9: the kernel drops the lock with the process
        holder.wait()
    assert (tmp_path / ".bertlib.lock").exists()   # left by the killed process, but not locked
    rundirs.claim_save_dir(tmp_path).release()


def test_a_finished_runs_directory_needs_an_opt_in(tiny, tmp_path):
    save(tiny, tmp_path, 2)
    with pytest.raises(RunDirError, match="holds an earlier run's checkpoints \\(step_2, latest\\): resume "
                                          "it with --model_load_dir .*--overwrite_output_dir"):
        rundirs.claim_save_dir(tmp_path)
    rundirs.claim_save_dir(tmp_path, resume_from=tmp_path / "step_2").release()   # resuming it is fine
    assert (tmp_path / "step_2").is_dir()
    rundirs.claim_save_dir(tmp_path, overwrite=True).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_tmp_cleaned_at_start(tmp_path):
    (tmp_path / ".step_5.tmp" / "model").mkdir(parents=True)
    (tmp_path / ".step_4.deleting").mkdir()
    (tmp_path / ".latest.tmp").write_text("step_5\n")
    lock = rundirs.claim_save_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bertlib.lock"]
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unusable_directories_are_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="--model_save_dir .*/file is a file, not a directory"):
        rundirs.claim_save_dir(tmp_path / "file")
    with pytest.raises(RunDirError, match="cannot be created"):
        rundirs.check_writable(tmp_path / "file" / "sub", "--log_dir")
    five_mb_free = shutil._ntuple_diskusage(1 << 30, (1 << 30) - (5 << 20), 5 << 20)
    monkeypatch.setattr(rundirs.shutil, "disk_usage", lambda path: five_mb_free)
    with pytest.raises(RunDirError, match="has 5 MB free; one checkpoint of this model needs about 12 MB"):
        rundirs.check_writable(tmp_path, "--model_save_dir", need_bytes=12 << 20)


def test_unwritable_directory_is_named(tmp_path, monkeypatch):
    """What an ordinary user meets in a read-only directory (root would write anyway)."""
    def denied(self, data):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", denied)
    with pytest.raises(RunDirError, match=f"^--log_dir {tmp_path} is not writable: Permission denied$"):
        rundirs.check_writable(tmp_path, "--log_dir")


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv to drop root")
def test_read_only_directory_is_refused(tmp_path):
    """As an ordinary user (root writes anywhere): a read-only directory is named, not hit at the
    first save."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    tmp_path.chmod(0o755)
    code = ("import sys; from bertlib.rundirs import check_writable, RunDirError\n"
            "try: check_writable(sys.argv[1], '--model_save_dir')\n"
            "except RunDirError as e: print(e)")
    cmd = [sys.executable, "-c", code, str(ro)]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0 and not proc.stdout:
        pytest.skip(f"an unprivileged user cannot run this interpreter: {proc.stderr.strip()[-160:]}")
    assert proc.stdout.strip() == f"--model_save_dir {ro} is not writable: Permission denied", proc.stderr
