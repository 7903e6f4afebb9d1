"""bert-make-squad-data: SQuAD v1.1 JSON -> OFRecord shards for fine-tuning or evaluation.

    bert-make-squad-data --input_file train-v1.1.json --vocab_file vocab.txt \\
        --output_dir squad/train --is_training --data_part_num 8
    bert-make-squad-data --input_file dev-v1.1.json --vocab_file vocab.txt \\
        --output_dir squad/dev --eval

Training records hold input_ids, input_mask, segment_ids [max_seq_length] and start_positions,
end_positions [1]; eval records hold unique_ids [1] instead. A squad_features.json manifest next
to the shards records the settings; prediction recomputes the token maps from the same JSON file
and vocab and checks them against it.
"""
from __future__ import annotations

import argparse
import sys
import time

from .common import add_lower_case_flag, add_progress_flag, make_parser, run_cli

PROG = "bert-make-squad-data"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        PROG, "Make SQuAD v1.1 OFRecords (BERT's features: WordPiece, doc-stride windows, "
        "answer positions).")
    p.add_argument("--input_file", required=True, help="SQuAD v1.1 JSON file (train or dev)")
    p.add_argument("--vocab_file", required=True, help="WordPiece vocab.txt of the model")
    p.add_argument("--output_dir", required=True,
                   help="directory for part-0 .. part-N and squad_features.json")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--is_training", dest="is_training", action="store_true",
                      help="training records, with the answer's start/end token positions")
    mode.add_argument("--eval", dest="is_training", action="store_false",
                      help="evaluation records, with unique_ids for post-processing")
    p.add_argument("--max_seq_length", type=int, default=384,
                   help="tokens per sequence: [CLS] question [SEP] context window [SEP]")
    p.add_argument("--doc_stride", type=int, default=128,
                   help="tokens between the starts of consecutive context windows")
    p.add_argument("--max_query_length", type=int, default=64,
                   help="questions longer than this many tokens are truncated")
    add_lower_case_flag(p, "lower-case and strip accents (uncased vocab); false keeps case and "
                        "accents (cased vocab)")
    p.add_argument("--data_part_num", type=int, default=1,
                   help="number of part files; at least the number of ranks that will read them")
    add_progress_flag(p, "no progress bar")
    return p


def _make_squad_data(args):
    from ..squad.features import make_squad_data
    from ..tokenization import load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(args.vocab_file, lowercase=args.do_lower_case)
    manifest = make_squad_data(
        args.input_file, tokenizer, args.output_dir, is_training=args.is_training,
        max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
        max_query_length=args.max_query_length, data_part_num=args.data_part_num,
        do_lower_case=args.do_lower_case, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    kind = "training" if args.is_training else "eval"
    skipped = len(manifest.get("skipped", []))
    print(
        f"{kind} data: {manifest['num_examples']} examples"
        + (f" ({skipped} skipped: answer not alignable to words)" if skipped else "")
        + f", {manifest['num_features']} features, {manifest['data_part_num']} parts, "
        f"seq {manifest['max_seq_length']}, {seconds:.1f} seconds -> {args.output_dir}"
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _make_squad_data, args, bad_input=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
