"""bert-tensorboard: metrics.jsonl -> TensorBoard event files, read back record by record."""
import json
import struct
import threading
import time

import pytest

from bertlib.cli import tensorboard as cli
from bertlib.tensorboard import export_metrics, scalars_of

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")  # in the dev extra: installed by make


def _record(i):
    return {"iter": i, "total_loss": 10.0 - i, "mlm_loss": 9.0 - i, "nsp_loss": 0.69, "sec_per_batch": 0.5,
            "sentences_per_sec": 64.0, "learning_rate": 1e-4 * (i + 1), "eta_seconds": 30.0 - i,
            "time": 1_700_000_000.0 + i}


def _scalars(out_dir):
    """(tag, step, value) of every scalar in the event files: the TFRecord framing read by hand."""
    found = []
    for path in sorted(out_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, round(value.simple_value, 6)))
    return found


def test_tags_of_a_record():
    assert scalars_of(_record(2)) == {
        "loss/total_loss": 8.0, "loss/mlm_loss": 7.0, "loss/nsp_loss": 0.69, "speed/sec_per_batch": 0.5,
        "speed/sentences_per_sec": 64.0, "train/learning_rate": pytest.approx(3e-4), "train/eta_seconds": 28.0}
    assert scalars_of({"iter": 1, "loss": 2.5, "time": 3.0, "note": "x"}) == {"loss/loss": 2.5}


def test_export_once_and_a_half_written_line(tmp_path):
    log = tmp_path / "run"
    log.mkdir()
    with open(log / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(_record(i)) + "\n" for i in (9, 19)))
        f.write('{"iter": 29, "total_lo')                        # the run is writing this one
    assert export_metrics(log) == 2
    scalars = _scalars(log / "tensorboard")
    assert ("loss/total_loss", 9, 1.0) in scalars and ("loss/total_loss", 19, -9.0) in scalars
    assert ("train/learning_rate", 19, 0.002) in scalars
    assert {step for _, step, _ in scalars} == {9, 19}           # iter exactly as logged


def test_follow_reads_records_as_the_run_writes_them(tmp_path):
    log = tmp_path / "run"
    log.mkdir()
    done = threading.Event()

    def run():
        for i in range(3):
            with open(log / "metrics.jsonl", "a") as f:
                f.write(json.dumps(_record(i)) + "\n")
            time.sleep(0.15)
        done.set()

    writer = threading.Thread(target=run)
    writer.start()
    # the writer waits 3 polls after its last record before it says it is done
    count = export_metrics(log, tmp_path / "events", follow=True, poll_seconds=0.05, stop=done.is_set)
    writer.join()
    assert count == 3
    assert sorted(step for tag, step, _ in _scalars(tmp_path / "events") if tag == "loss/total_loss") == [0, 1, 2]


def test_cli(tmp_path, capsys):
    log = tmp_path / "run"
    log.mkdir()
    (log / "metrics.jsonl").write_text(json.dumps({"iter": 4, "loss": 3.5, "time": 1.0}) + "\n")
    assert cli.main(["--log_dir", str(log), "--output_dir", str(tmp_path / "tb")]) == 0
    assert "1 records written" in capsys.readouterr().out
    assert _scalars(tmp_path / "tb") == [("loss/loss", 4, 3.5)]
    for argv, message in ((["--log_dir", str(tmp_path / "nope")], "is not a directory"),
                          (["--log_dir", str(tmp_path)], "metrics.jsonl not found"),
                          (["--log_dir", str(log), "--poll_seconds", "0"], "--poll_seconds must be > 0")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bert-tensorboard: error:") and message in err and err.count("\n") == 1
