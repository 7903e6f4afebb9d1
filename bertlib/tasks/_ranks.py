"""Running a task in N processes: the parent starts the launcher, each rank runs the task's body.

The parent prepares and validates everything first and hands the resolved options to the ranks
as JSON in the environment (no flags to re-parse, no data to validate again in every rank).
Run as ``python -m bertlib.tasks._ranks`` by the launcher only.
"""
from __future__ import annotations

import importlib
import json
import os

from ..launch import fail_fast, run_launcher

TASK_ENV = "BERTLIB_TASK"


class LaunchError(RuntimeError):
    """A rank failed (its traceback was printed); ``returncode`` is the launcher's exit code."""

    def __init__(self, returncode: int):
        super().__init__(f"the launched processes exited with code {returncode} (see their output above)")
        self.returncode = returncode


def launch_ranks(task: str, payload: dict, nproc_per_node: int, node_num: int = 1,
                 node_list: str | None = None, master_port: int | None = None,
                 relay_stdout: bool = True) -> None:
    """Run ``bertlib.tasks.<task>.rank_main(payload)`` in every process; raise LaunchError on failure."""
    code = run_launcher("bertlib.tasks._ranks", [], nproc_per_node=nproc_per_node, node_num=node_num,
                        node_list=node_list, master_port=master_port, relay_stdout=relay_stdout,
                        extra_env={TASK_ENV: json.dumps({"task": task, "payload": payload})})
    if code != 0:
        raise LaunchError(code)


def main():
    spec = json.loads(os.environ[TASK_ENV])
    module = importlib.import_module(f"bertlib.tasks.{spec['task']}")
    fail_fast(module.rank_main, spec["payload"])


if __name__ == "__main__":
    main()
