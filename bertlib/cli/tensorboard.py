"""bert-tensorboard: a run's metrics.jsonl as TensorBoard curves, once or live.

    bert-tensorboard --log_dir runs/pretrain --follow &    # while bert-pretrain --log_dir runs/pretrain runs
    tensorboard --logdir runs/pretrain/tensorboard
"""
from __future__ import annotations

import argparse
import sys

from .common import make_parser, run_cli

PROG = "bert-tensorboard"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Write the metrics a bertlib run logs (metrics.jsonl) as TensorBoard event files. "
                          "Needs tensorboardX: pip install 'bertlib[tensorboard]'.")
    p.add_argument("--log_dir", required=True,
                   help="the run's log directory: bert-pretrain's --log_dir or bert-squad's --output_dir")
    p.add_argument("--output_dir", default=None,
                   help="where the event files go (default: <log_dir>/tensorboard); point tensorboard --logdir here")
    p.add_argument("--follow", action="store_true",
                   help="keep reading new records as the run writes them, until Ctrl-C")
    p.add_argument("--poll_seconds", type=float, default=2.0, help="with --follow: how often to look for new records")
    return p


def _export(args):
    from ..tensorboard import export_metrics

    if args.poll_seconds <= 0:
        raise ValueError(f"--poll_seconds must be > 0 (got {args.poll_seconds})")
    count = export_metrics(args.log_dir, args.output_dir, follow=args.follow, poll_seconds=args.poll_seconds)
    print(f"{count} records written as TensorBoard scalars")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _export, args, bad_input=(ValueError, FileNotFoundError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
