"""Data pipeline throughput: making pre-training OFRecords, validating them, reading them with OneFlow.

    python bench/data_throughput.py                    # ../shared/data/corpus, all cores
    python bench/data_throughput.py --corpus my_corpus/ --num_workers 2 --batches 300

Prints:
* making data (seq 128, dupe_factor 1): instances/s of wall time, end to end (read + WordPiece +
  instances + encode + shuffle + write), and instances per CPU-second (all processes), which does
  not depend on what else runs on a shared machine;
* validating: records/s of :func:`bertlib.ofrecord.validate_data_dir` (what loaders run first);
* loading: samples/s through :class:`bertlib.loaders.PretrainingLoader` (OneFlow's OFRecordReader +
  7 OFRecordRawDecoders, shuffled, batch 32, tensors materialised with ``.numpy()``), and how many
  times BERT-base training's appetite that is (~1 sample/s on a 2-core CPU, bench/RESULTS.md).

Targets (issue 3): making >= 2,000 instances/s on 2 cores; loading >= 20x what training consumes.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _shared_data() -> Path:
    """``../shared/data`` next to this checkout, or next to the main checkout when this is a git
    worktree elsewhere (its ``.git`` file names ``<main>/.git/worktrees/<name>``)."""
    here = ROOT.parent / "shared" / "data"
    git = ROOT / ".git"
    if here.is_dir() or not git.is_file():
        return here
    try:
        text = git.read_text().strip()
    except OSError:
        return here
    if text.startswith("gitdir:"):
        main = Path(text.split(":", 1)[1].strip()).parents[2]        # <main>/.git/worktrees/<name>
        if (main.parent / "shared" / "data").is_dir():
            return main.parent / "shared" / "data"
    return here


SHARED = _shared_data()
BERT_BASE_SAMPLES_PER_S = 1.0  # BERT-base training on a 2-core CPU, rounded up (bench/RESULTS.md)


def cpu_seconds() -> float:
    """User + system time of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", nargs="+", default=[str(SHARED / "corpus")],
                    help="text files or directories (default: ../shared/data/corpus)")
    ap.add_argument("--vocab_file", default=None,
                    help="vocab.txt (default: ../shared/data/bert/vocab.txt, else the embedded corpus's)")
    ap.add_argument("--num_workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--seq_length", type=int, default=128)
    ap.add_argument("--dupe_factor", type=int, default=1)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=300, help="timed loader batches")
    ap.add_argument("--output_dir", default=None, help="keep the data here (default: a temp dir)")
    args = ap.parse_args()

    from bertlib.loaders import PretrainingLoader
    from bertlib.ofrecord import validate_data_dir
    from bertlib.pretraining_data import create_pretraining_data, pretraining_schema
    from bertlib.resources import default_vocab

    vocab = args.vocab_file or (SHARED / "bert" / "vocab.txt" if (SHARED / "bert" / "vocab.txt").is_file()
                                else default_vocab())
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="bertlib-bench-"))
    cores = len(os.sched_getaffinity(0))
    print(f"corpus {' '.join(args.corpus)}; vocab {vocab}; {cores} cores; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    try:
        cpu0 = cpu_seconds()
        s = create_pretraining_data(args.corpus, vocab, out, seq_length=args.seq_length,
                                    dupe_factor=args.dupe_factor, num_workers=args.num_workers,
                                    progress=False)
        cpu = cpu_seconds() - cpu0
        print(f"making data: {s.instances:,} instances (seq {args.seq_length}, dupe_factor "
              f"{args.dupe_factor}) in {s.seconds:.1f} s wall = {s.instances_per_second:,.0f} instances/s "
              f"(reading + WordPiece {s.tokenize_seconds:.1f} s); {cpu:.1f} CPU-s = "
              f"{s.instances / cpu:,.0f} instances per CPU-second "
              f"(x{cores} cores = {cores * s.instances / cpu:,.0f}/s on an idle machine)", flush=True)

        t = time.perf_counter()
        summary = validate_data_dir(out, pretraining_schema(args.seq_length, 20), s.data_part_num,
                                    vocab_size=s.vocab_size, id_features=("input_ids", "masked_lm_ids"))
        dt = time.perf_counter() - t
        print(f"validating: {summary.num_records:,} records in {dt:.2f} s = {summary.num_records / dt:,.0f} "
              "records/s", flush=True)

        loader = PretrainingLoader(out, batch_size=args.batch_size, seq_length=args.seq_length,
                                   max_predictions_per_seq=20, shuffle=True, validate=False)
        for batch in loader.batches(20):  # warm-up: first reads, shuffle buffer fill
            batch["input_ids"].numpy()
        t = time.perf_counter()
        for batch in loader.batches(args.batches):
            for tensor in batch.values():
                tensor.numpy()
        dt = time.perf_counter() - t
        rate = args.batches * args.batch_size / dt
        print(f"loading: {args.batches} batches of {args.batch_size} in {dt:.2f} s = {rate:,.0f} samples/s "
              f"= {rate / BERT_BASE_SAMPLES_PER_S:,.0f}x BERT-base training (~{BERT_BASE_SAMPLES_PER_S:g} "
              f"sample/s on this CPU); load average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if not args.output_dir:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
