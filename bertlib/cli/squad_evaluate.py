"""bert-squad-evaluate: score SQuAD v1.1 predictions by the official rules.

    bert-squad-evaluate dev-v1.1.json predictions.json
    {"exact_match": 81.2, "f1": 88.5}

Prints JSON like the official evaluate-v1.1.py. Questions without a prediction score 0 (a note on
stderr says how many); prediction ids that are not in the dataset are an error.
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import make_parser, run_cli

PROG = "bert-squad-evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, "Official SQuAD v1.1 exact match and F1 (in percent).")
    p.add_argument("dataset", help="SQuAD v1.1 JSON file (e.g. dev-v1.1.json)")
    p.add_argument("predictions", help="predictions JSON: {question id: answer text}")
    p.add_argument("--details", action="store_true",
                   help="also print the question count and how many have no prediction")
    return p


def _evaluate(args):
    from ..squad.evaluate import evaluate

    result = evaluate(args.dataset, args.predictions, details=True)
    if result["missing"]:
        print(f"{PROG}: {result['missing']} of {result['total']} questions have no prediction "
              "and score 0", file=sys.stderr)
    if not args.details:
        result = {"exact_match": result["exact_match"], "f1": result["f1"]}
    print(json.dumps(result))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _evaluate, args)


if __name__ == "__main__":
    sys.exit(main())
