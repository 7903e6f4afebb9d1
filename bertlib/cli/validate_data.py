"""bert-validate-data: check an OFRecord directory before training on it.

    bert-validate-data --data_dir data/pretrain                      # settings from bertlib_data.json
    bert-validate-data --data_dir squad/train --schema squad-train --num_ranks 8

OneFlow's reader aborts the process (SIGABRT) on a missing, empty, truncated or corrupt part
file and returns silent zeros for out-of-range token ids. This checks every part and record:
framing, protobuf, features, lengths, id ranges, parts >= ranks. Exit code 0 when the data is
good, 2 with one line naming the file, record and byte offset when it is not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..schemas import SCHEMA_NAMES
from .common import add_progress_flag, make_parser, run_cli

PROG = "bert-validate-data"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Validate OFRecord shards (pre-training or SQuAD).")
    p.add_argument("--data_dir", required=True, help="directory of part-* files")
    p.add_argument("--schema", choices=SCHEMA_NAMES, default=None,
                   help="record layout (default: from the directory's metadata, else pretraining)")
    p.add_argument("--data_part_num", type=int, default=None, help="number of parts (default: count them)")
    p.add_argument("--num_ranks", type=int, default=1, help="processes that will read the data")
    p.add_argument("--seq_length", type=int, default=None,
                   help="sequence length (default: from metadata; else 128, or 384 for SQuAD)")
    p.add_argument("--max_predictions_per_seq", type=int, default=None,
                   help="masked positions per record (default: from metadata, else 20)")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--vocab_file", help="check token ids against this vocab.txt")
    vocab.add_argument("--vocab_size", type=int, help="check token ids against this size")
    p.add_argument("--part_name_prefix", default="part-", help="file name prefix of the parts")
    p.add_argument("--part_name_suffix_length", type=int, default=None,
                   help="zero-padded index width (5 for part-00000)")
    p.add_argument("--max_records_per_part", type=int, default=None,
                   help="decode only the first N records of each part (the framing of all is checked); "
                        "default: all")
    add_progress_flag(p)
    return p


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _validate(args):
    from ..loaders import count_parts
    from ..pretraining_data import METADATA_FILE
    from ..schemas import schema_by_name
    from ..tokenization import read_vocab

    data_dir = Path(args.data_dir)
    meta = _read_json(data_dir / METADATA_FILE)
    squad = _read_json(data_dir / "squad_features.json")
    schema_name = args.schema or (("squad-train" if squad.get("is_training") else "squad-eval")
                                  if squad else "pretraining")
    vocab_size = len(read_vocab(args.vocab_file)) if args.vocab_file else args.vocab_size
    if schema_name == "pretraining":
        seq = args.seq_length or meta.get("seq_length", 128)
        vocab_size = vocab_size or meta.get("vocab_size")
    else:
        seq = args.seq_length or squad.get("max_seq_length", 384)
    schema = schema_by_name(schema_name, seq, args.max_predictions_per_seq
                            or meta.get("max_predictions_per_seq", 20))
    parts = args.data_part_num or count_parts(data_dir, args.part_name_prefix, args.part_name_suffix_length)
    summary = schema.validate(data_dir, parts, num_ranks=args.num_ranks, vocab_size=vocab_size,
                              prefix=args.part_name_prefix, suffix_length=args.part_name_suffix_length,
                              max_records_per_part=args.max_records_per_part,
                              progress=not args.no_progress and sys.stderr.isatty())
    print(f"OK: {summary}; schema {schema_name} {schema!r}"
          + (f"; token ids < {vocab_size}" if vocab_size else "; token ids not checked (no vocab size)"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _validate, args, bad_input=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
