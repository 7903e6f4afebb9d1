"""Plots of training runs from what they logged: losses, learning rate, throughput.

Every run writes one JSON record per log line to ``<log_dir>/metrics.jsonl`` (``iter`` as in the log
line, the losses, ``learning_rate``, ``sec_per_batch``, ``sentences_per_sec``). These helpers take
runs as ``{label: log_dir or list of records}`` so a notebook compares runs in one call::

    from bertlib.plot import plot_run
    plot_run({"1 process": "runs/1proc", "2 processes": "runs/2proc"})

The x axis is ``iter`` exactly as the log lines print it, so a plot and a log can be read side by side.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence, Union

Records = List[dict]
Runs = Union[Mapping[str, Union[str, os.PathLike, Records]], str, os.PathLike, Records]

__all__ = ["load_runs", "steady_throughput", "plot_losses", "plot_learning_rate", "plot_throughput", "plot_run"]


def load_runs(runs: Runs) -> Dict[str, Records]:
    """``{label: records}`` from log dirs or records; a single run gets the label ``"run"``."""
    from .trainer import read_metrics

    if not isinstance(runs, Mapping):
        runs = {"run": runs}
    loaded = {}
    for label, run in runs.items():
        records = list(run) if isinstance(run, (list, tuple)) else read_metrics(run)
        if not records:
            raise ValueError(f"run {label!r}: no metrics records (is {run} a log_dir with metrics.jsonl?)")
        loaded[label] = records
    return loaded


def _loss_keys(records: Records) -> List[str]:
    return [k for k in records[0] if k.endswith("loss")]


def steady_throughput(records: Records) -> float:
    """Mean sentences/s over the log intervals after the first (which includes start-up and compilation)."""
    steady = records[1:] or records
    return sum(r["sentences_per_sec"] for r in steady) / len(steady)


def plot_losses(runs: Runs, ax=None, keys: Sequence[str] | None = None):
    """Each run's losses against ``iter``; ``keys`` defaults to every field ending in ``loss``."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    runs = load_runs(runs)
    for label, records in runs.items():
        shown = list(keys or _loss_keys(records))
        for key in shown:
            name = label if len(shown) == 1 else f"{label}: {key}"
            ax.plot([r["iter"] for r in records], [r[key] for r in records], marker=".", label=name)
    ax.set(xlabel="iter (as logged)", ylabel="loss", title="training loss")
    ax.legend(fontsize=8)
    return ax


def plot_learning_rate(runs: Runs, ax=None):
    """The learning rate each log line was printed with: warm-up, then decay."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for label, records in load_runs(runs).items():
        ax.plot([r["iter"] for r in records], [r["learning_rate"] for r in records], marker=".", label=label)
    ax.set(xlabel="iter (as logged)", ylabel="learning rate", title="learning-rate schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.legend(fontsize=8)
    return ax


def plot_throughput(runs: Runs, ax=None):
    """Steady-state sentences/s of each run as bars, the value written on each."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    runs = load_runs(runs)
    speeds = [steady_throughput(records) for records in runs.values()]
    bars = ax.bar(list(runs), speeds, color=[f"C{i}" for i in range(len(runs))])
    ax.bar_label(bars, labels=[f"{s:.1f}" for s in speeds])
    ax.set(xlabel="run", ylabel="sentences / s (after the first interval)", title="throughput")
    return ax


def plot_run(runs: Runs, figsize=(13, 3.6)):
    """Losses, learning rate and throughput side by side; returns the figure."""
    import matplotlib.pyplot as plt

    runs = load_runs(runs)
    fig, axes = plt.subplots(1, 3, figsize=figsize)
    plot_losses(runs, axes[0])
    plot_learning_rate(runs, axes[1])
    plot_throughput(runs, axes[2])
    fig.tight_layout()
    return fig
