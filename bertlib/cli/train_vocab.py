"""bert-train-vocab: learn a WordPiece vocab.txt from a text corpus.

    bert-train-vocab --input corpus/ --output_dir my_vocab --vocab_size 30522

The text is read the way bert-make-pretraining-data reads it (bertlib.corpus), normalised like
BERT (uncased: lower-case, accents stripped), and split with BERT's pre-tokenizer. The special
tokens [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0..4. A small corpus yields fewer tokens than asked
(a piece must occur --min_frequency times).
"""
from __future__ import annotations

import argparse
import sys

from .common import add_lower_case_flag, add_progress_flag, make_parser, run_cli

PROG = "bert-train-vocab"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Train a WordPiece vocabulary (vocab.txt) for BERT.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="text files or directories of *.txt files")
    p.add_argument("--output_dir", required=True, help="directory to write vocab.txt into")
    p.add_argument("--vocab_size", type=int, default=30522, help="largest vocabulary size, specials included")
    p.add_argument("--min_frequency", type=int, default=2, help="a piece must occur this many times")
    p.add_argument("--input_format", choices=("auto", "sentences", "paragraphs"), default="auto",
                   help="how the text is cut into sentences (see bert-make-pretraining-data)")
    add_lower_case_flag(p, "lower-case and strip accents (uncased vocabulary); false keeps case and "
                           "accents (a cased vocabulary)")
    add_progress_flag(p, "no progress bar")
    return p


def _train_vocab(args):
    from ..tokenization import load_tokenizer, read_vocab, train_vocab

    path = train_vocab(args.input, args.vocab_size, args.output_dir, lowercase=args.do_lower_case,
                       min_frequency=args.min_frequency, input_format=args.input_format,
                       progress=not args.no_progress)
    vocab = read_vocab(path)
    example = load_tokenizer(path, args.do_lower_case).encode(
        "Tokenization splits rare words into pieces.", add_special_tokens=False).tokens
    print(f"wrote {path}: {len(vocab):,} tokens (asked for at most {args.vocab_size:,}); "
          f"example: {' '.join(example)}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _train_vocab, args, bad_input=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
