"""What a run leaves beside its logs so that it can be understood, compared and repeated later.

``run_config.json`` (rank 0, in the run's log or output directory) holds the resolved options
(what actually ran, defaults filled in from the data and the presets), the versions of bertlib,
OneFlow and Python, the number of processes, the command line and the start time. Checkpoints
record their own copy of the options; this file exists for runs that never checkpoint and for
reading a run without loading one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

__all__ = ["RUN_CONFIG_FILE", "write_run_config", "read_run_config", "format_eta"]

RUN_CONFIG_FILE = "run_config.json"


def _versions() -> dict:
    from importlib import metadata

    from . import __version__

    found = {"bertlib": __version__, "python": platform.python_version()}
    oneflow = sys.modules.get("oneflow")
    try:  # importing OneFlow only to read its version would cost seconds
        found["oneflow"] = getattr(oneflow, "__version__", None) or metadata.version("oneflow")
    except metadata.PackageNotFoundError:
        found["oneflow"] = None
    return found


def write_run_config(directory, task: str, options, world_size: int, **extra) -> Path:
    """Write ``directory/run_config.json``; ``options`` is a dataclass (or a dict) of the resolved
    options, ``extra`` more JSON-able facts (the model config, the input paths)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if dataclasses.is_dataclass(options):
        options = dataclasses.asdict(options)
    now = time.time()
    record = {
        "task": task,
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "start_timestamp": now,
        "world_size": world_size,
        "versions": _versions(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else [],
        "options": options,
        **extra,
    }
    tmp = path / f".{RUN_CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path / RUN_CONFIG_FILE)
    return path / RUN_CONFIG_FILE


def read_run_config(directory) -> dict:
    """The ``run_config.json`` of a run directory."""
    return json.loads((Path(directory) / RUN_CONFIG_FILE).read_text(encoding="utf-8"))


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (days as ``Nd H:MM:SS``): the time left, as the log line shows it."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text
