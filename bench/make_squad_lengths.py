#!/usr/bin/env python3
"""Write bench/squad_window_lengths.json: how many tokens SQuAD v1.1 dev windows hold, per seq length.

The SQuAD benchmark (bench/squad_throughput.py) draws its synthetic windows' lengths from these
counts, so that prediction and fine-tuning see as much padding as on the real dev set. Only the
lengths are stored (a histogram per ``max_seq_length``), made with bert-squad's feature recipe:
doc_stride 128, max_query_length 64, bert-base-uncased's vocab.

    python bench/make_squad_lengths.py                 # the dev set bertlib.datasets.find_data() finds
    python bench/make_squad_lengths.py --dev dev-v1.1.json --vocab vocab.txt
"""
from __future__ import annotations

import argparse
import collections
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ_LENGTHS = (128, 256, 384, 512)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", default=None, help="SQuAD v1.1 dev JSON (default: the full-size one find_data() finds)")
    ap.add_argument("--vocab", default=None, help="WordPiece vocab.txt (default: bert-base-uncased's, found alike)")
    ap.add_argument("--out", default=os.path.join(HERE, "squad_window_lengths.json"))
    args = ap.parse_args()

    from bertlib.datasets import find_data
    from bertlib.squad import convert_examples_to_features, read_squad_examples
    from bertlib.tokenization import load_tokenizer

    if args.dev is None or args.vocab is None:
        data = find_data()
        if not data.full and args.dev is None:
            raise SystemExit("the full SQuAD v1.1 dev set was not found: pass --dev (see bertlib.datasets.find_data)")
    dev = args.dev or str(data.squad_dev)
    tokenizer = load_tokenizer(args.vocab or str(data.vocab), lowercase=True)
    examples = read_squad_examples(dev, is_training=False)
    table = {}
    for seq in SEQ_LENGTHS:
        features = convert_examples_to_features(examples, tokenizer, max_seq_length=seq, doc_stride=128,
                                                max_query_length=64)
        counts = collections.Counter(int(f.num_tokens) for f in features)
        table[str(seq)] = {str(k): counts[k] for k in sorted(counts)}
        mean = sum(k * c for k, c in counts.items()) / len(features)
        full = counts[seq] / len(features)
        print(f"seq {seq}: {len(features)} windows, {mean:.1f} tokens on average, {full:.1%} full")
    doc = {"source": f"SQuAD v1.1 dev ({os.path.basename(dev)}), {len(examples)} questions; doc_stride 128, "
                     "max_query_length 64, bert-base-uncased vocab; made by bench/make_squad_lengths.py",
           "tokens_per_window": table}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
