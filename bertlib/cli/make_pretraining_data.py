"""bert-make-pretraining-data: text corpus -> BERT pre-training OFRecords.

    bert-make-pretraining-data --input corpus/ --vocab_file vocab.txt --output_dir data/pretrain
    bert-make-pretraining-data --output_dir data/demo          # the embedded default corpus

Input: text files or directories (their *.txt files); one sentence per line with blank lines
between documents, or running prose (see bertlib.corpus; --input_format). Output: part-0 ..
part-{N-1} with the seven features of bertlib.schemas.pretraining_schema, and bertlib_data.json
(settings and counts).
The same --seed gives the same bytes, whatever --num_workers.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import add_lower_case_flag, add_progress_flag, make_parser, run_cli

PROG = "bert-make-pretraining-data"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        PROG, "Make BERT pre-training OFRecords (masked LM + next sentence prediction) from "
              "text, with the algorithm of Google's create_pretraining_data.")
    p.add_argument("--input", nargs="+", metavar="PATH",
                   help="text files or directories of *.txt files (default: the embedded corpus of "
                        "Python's reference documentation, see bertlib.resources)")
    p.add_argument("--input_format", choices=("auto", "sentences", "paragraphs"), default="auto",
                   help="'sentences': one sentence per line, blank line between documents; "
                        "'paragraphs': running prose, one document per file; 'auto': guess per file")
    p.add_argument("--vocab_file",
                   help="WordPiece vocab.txt (default: $BERTLIB_VOCAB; else the vocab of the embedded "
                        "corpus, or with --input a vocab trained on the input and saved in --output_dir)")
    p.add_argument("--vocab_size", type=int, default=30522,
                   help="size of the vocabulary trained when there is no --vocab_file for an --input")
    p.add_argument("--output_dir", required=True, help="directory for part-* files and bertlib_data.json")
    p.add_argument("--seq_length", type=int, default=128, help="tokens per instance, [CLS] and [SEP]s included")
    p.add_argument("--max_predictions_per_seq", type=int, default=20,
                   help="at most this many masked positions per instance")
    p.add_argument("--data_part_num", type=int, default=4,
                   help="number of part files; at least the number of ranks that will read them")
    p.add_argument("--dupe_factor", type=int, default=5,
                   help="passes over the corpus, each with different masks and pairs")
    p.add_argument("--masked_lm_prob", type=float, default=0.15, help="fraction of tokens to mask")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="probability of a shorter random target length for a sentence pair")
    p.add_argument("--whole_word_mask", action="store_true",
                   help="mask all WordPieces of a word together")
    add_lower_case_flag(p, "lower-case and strip accents (uncased vocabulary); false keeps case and "
                           "accents (cased vocabulary)")
    p.add_argument("--seed", type=int, default=12345, help="random seed; same seed, same bytes")
    p.add_argument("--num_workers", type=int, default=None,
                   help="worker processes (default: all cores)")
    add_progress_flag(p)
    return p


def _vocab_file(args, inputs, input_format):
    """--vocab_file, BERTLIB_VOCAB, the default data's vocab, or one trained on the input."""
    from ..resources import default_vocab, find_vocab
    from ..tokenization import train_vocab

    if args.vocab_file:
        return find_vocab(args.vocab_file)
    if os.environ.get("BERTLIB_VOCAB"):
        return find_vocab()
    if args.input is None:
        return default_vocab()
    print(f"{PROG}: no --vocab_file: training a {args.vocab_size}-token WordPiece vocab on the "
          "input", flush=True)
    return train_vocab(inputs, args.vocab_size, args.output_dir, lowercase=args.do_lower_case,
                       input_format=input_format, progress=not args.no_progress)


def _make_pretraining_data(args):
    from ..corpus import find_text_files
    from ..pretraining_data import create_pretraining_data
    from ..resources import default_corpus_dir
    from ..schemas import pretraining_schema
    from ..tokenization import read_vocab

    if args.num_workers is not None and args.num_workers < 1:
        raise ValueError(f"--num_workers must be >= 1 (got {args.num_workers})")
    inputs, input_format = args.input, args.input_format
    if inputs is None:
        inputs, input_format = [default_corpus_dir()], "sentences"
        print(f"{PROG}: no --input: using the embedded corpus {inputs[0]}", flush=True)
    find_text_files(inputs)  # input errors before any work
    vocab_file = _vocab_file(args, inputs, input_format)
    print(f"{PROG}: vocab {vocab_file} ({len(read_vocab(vocab_file)):,} tokens)", flush=True)
    summary = create_pretraining_data(
        inputs, vocab_file, args.output_dir, seq_length=args.seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq, data_part_num=args.data_part_num,
        dupe_factor=args.dupe_factor, masked_lm_prob=args.masked_lm_prob,
        short_seq_prob=args.short_seq_prob, whole_word_mask=args.whole_word_mask, seed=args.seed,
        num_workers=args.num_workers, progress=not args.no_progress, input_format=input_format,
        lowercase=args.do_lower_case)
    # Read back what was written: the same check the loaders do before training.
    pretraining_schema(args.seq_length, args.max_predictions_per_seq).validate(
        args.output_dir, args.data_part_num, vocab_size=summary.vocab_size)
    print(summary)
    print(f"next: bert-pretrain --data_dir {Path(args.output_dir)} --data_part_num {args.data_part_num} "
          f"--vocab_file {vocab_file} --seq_length {args.seq_length} "
          f"--max_predictions_per_seq {args.max_predictions_per_seq}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _make_pretraining_data, args, bad_input=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
