"""Live curves in TensorBoard, from the metrics a run writes: nothing to add to the run itself.

Every run appends one JSON record per log line to ``<log_dir>/metrics.jsonl`` (pre-training's
``log_dir``, SQuAD's ``output_dir``). This module turns those records into TensorBoard event files,
once or following the file while the run goes on::

    bert-tensorboard --log_dir runs/pretrain --follow &     # writes runs/pretrain/tensorboard/
    tensorboard --logdir runs/pretrain/tensorboard

Reading the file the run already writes keeps one source of truth (what the log lines print) and
keeps TensorBoard out of the training processes. The event files are written with ``tensorboardX``
(``pip install 'bertlib[tensorboard]'``), which works with the protobuf 3 that OneFlow 0.9 needs.

Tags: every loss under ``loss/`` (``loss/total_loss``, ``loss/mlm_loss``, ... or ``loss/loss``), the
learning rate as ``train/learning_rate``, ``speed/sentences_per_sec`` and ``speed/sec_per_batch``,
``train/eta_seconds`` when logged; the step is ``iter`` exactly as the log lines print it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

__all__ = ["EVENTS_SUBDIR", "export_metrics", "scalars_of"]

EVENTS_SUBDIR = "tensorboard"
_GROUPS = {"learning_rate": "train", "eta_seconds": "train", "sentences_per_sec": "speed",
           "sec_per_batch": "speed"}
_NOT_SCALARS = {"iter", "time"}


def scalars_of(record: dict) -> dict[str, float]:
    """``{tag: value}`` of one metrics record (see the module docstring for the tags)."""
    tags = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        group = "loss" if key.endswith("loss") else _GROUPS.get(key, "train")
        tags[f"{group}/{key}"] = float(value)
    return tags


def _writer(out_dir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard export needs tensorboardX: pip install 'bertlib[tensorboard]'") from None
    return SummaryWriter(str(out_dir))


def export_metrics(log_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                   follow: bool = False, poll_seconds: float = 2.0,
                   stop: Callable[[], bool] | None = None) -> int:
    """Write the records of ``<log_dir>/metrics.jsonl`` as TensorBoard scalars; return how many.

    ``out_dir`` defaults to ``<log_dir>/tensorboard``. With ``follow`` it keeps reading records as the
    run appends them, every ``poll_seconds``, until ``stop()`` is true (or Ctrl-C). A half-written
    last line is read when it is complete; a file that shrinks (a resumed run cuts it back to its
    checkpoint) is read again from its start, and TensorBoard shows the later values of a step.
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log_dir {log_dir} is not a directory")
    metrics = log_dir / "metrics.jsonl"
    if not follow and not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: is {log_dir} a run's log_dir?")
    writer = _writer(Path(out_dir) if out_dir is not None else log_dir / EVENTS_SUBDIR)
    written, offset = 0, 0
    try:
        while True:
            size = metrics.stat().st_size if metrics.is_file() else 0
            if size < offset:
                offset = 0
            if size > offset:
                with open(metrics, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                complete = chunk[:chunk.rfind(b"\n") + 1]   # leave a line the run is still writing
                offset += len(complete)
                for line in complete.decode("utf-8").splitlines():
                    if line.strip():
                        written += _write_record(writer, json.loads(line), metrics)
                writer.flush()
            if not follow or (stop is not None and stop()):
                return written
            time.sleep(poll_seconds)
    finally:
        writer.close()


def _write_record(writer, record: dict, source: Path) -> int:
    if "iter" not in record:
        raise ValueError(f"{source}: a record without 'iter': {record}")
    for tag, value in scalars_of(record).items():
        writer.add_scalar(tag, value, global_step=int(record["iter"]), walltime=record.get("time"))
    return 1
