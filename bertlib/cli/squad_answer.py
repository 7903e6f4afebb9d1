"""bert-squad-answer: ask a fine-tuned BERT question-answering model about a text.

    bert-squad-answer --model_dir runs/squad/model --question "Who won Super Bowl 50?" \\
        --context_file article.txt --top_k 3

    1. "Denver Broncos"  probability 0.871  score 11.42  characters 177-191
    ...

The model directory is what ``bert-squad --do_train`` writes to ``output_dir/model``: config.json,
model.safetensors and the tokenizer it was fine-tuned with (vocab.txt, tokenizer_config.json), so
neither ``--vocab_file`` nor ``--do_lower_case`` is needed. Contexts of any
length work: they are cut into overlapping windows of ``--max_seq_length`` tokens, as in SQuAD
evaluation. ``--json`` prints one JSON object per question (JSON Lines) with the answers' text,
score, probability and character offsets ``start``/``end`` into the context
(``context[start:end] == text``). The library call behind it is ``bertlib.squad.answer``.

Exit codes: 0 answered, 2 bad input (missing directory or vocab, empty question or context, bad
settings), 1 a failure while running.
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import add_lower_case_flag, make_parser, run_cli

PROG = "bert-squad-answer"


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        PROG,
        description="Answer questions about a text with a fine-tuned BERT question-answering model: "
                    "the top-k answer spans with their scores and character offsets.")
    p.add_argument("--model_dir", required=True,
                   help="fine-tuned model directory (config.json + model.safetensors with a QA head), "
                        "e.g. bert-squad's OUTPUT_DIR/model")
    p.add_argument("--question", required=True, action="append",
                   help="the question; repeat the flag to ask several about the same context")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--context", help="the text that holds the answer")
    text.add_argument("--context_file",
                      help="read the context from this UTF-8 file instead ('-': standard input)")
    p.add_argument("--top_k", type=int, default=1, help="number of answers per question, best first")
    p.add_argument("--vocab_file",
                   help="the model's vocab.txt; needed only when MODEL_DIR has no vocab.txt")
    add_lower_case_flag(p, default=None,
                        help="lower-case the text (uncased vocab) or not (--do_lower_case false: "
                             "cased); default: as MODEL_DIR's tokenizer_config.json records, else "
                             "as the vocab's case says")
    g = p.add_argument_group("windows and answers")
    g.add_argument("--max_seq_length", type=int, default=384,
                   help="tokens per window: [CLS] question [SEP] part of the context [SEP]")
    g.add_argument("--doc_stride", type=int, default=128,
                   help="tokens between the starts of consecutive windows over a long context")
    g.add_argument("--max_query_length", type=int, default=None,
                   help="longer questions are cut to this many tokens "
                        "(default: 64, or max_seq_length / 2 if smaller)")
    g.add_argument("--max_answer_length", type=int, default=30, help="longest answer, in tokens")
    g.add_argument("--batch_size", type=int, default=32, help="windows per forward pass")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto = cuda when OneFlow sees a GPU, else cpu")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per question: {question, answers: [{text, score, "
                        "probability, start, end}]}")
    return p


def _read_context(args) -> str:
    from ..squad.answer import QAError

    if args.context is not None:
        return args.context
    if args.context_file is None:
        raise QAError("no context: give --context TEXT or --context_file FILE")
    if args.context_file == "-":
        return sys.stdin.read()
    try:
        with open(args.context_file, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise QAError(f"--context_file {args.context_file}: {exc}") from None


def _answer(args) -> int:
    from ..squad.answer import QAError, QuestionAnswerer

    # Input checks first: they cost nothing, loading the model costs seconds.
    context = _read_context(args)
    if not context.strip():
        raise QAError("the context is empty")
    if any(not q.strip() for q in args.question):
        raise QAError("the question is empty")
    if args.top_k < 1:
        raise QAError(f"--top_k must be >= 1 (got {args.top_k})")
    try:
        qa = QuestionAnswerer(args.model_dir, args.vocab_file, do_lower_case=args.do_lower_case,
                              device=args.device, max_seq_length=args.max_seq_length,
                              doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                              max_answer_length=args.max_answer_length, batch_size=args.batch_size)
    except RuntimeError as exc:
        if args.device != "cuda":
            raise
        raise QAError(str(exc)) from None  # --device cuda without a usable GPU
    results = qa([(q, context) for q in args.question], top_k=args.top_k)
    for n, (question, answers) in enumerate(zip(args.question, results)):
        if args.json:
            print(json.dumps({"question": question, "answers": [a.to_dict() for a in answers]},
                             ensure_ascii=False))
            continue
        if len(args.question) > 1:
            print(("\n" if n else "") + f"Q: {question}")
        if not answers:
            print("no answer: the context has no span the model can point at")
        for rank, a in enumerate(answers, 1):
            print(f"{rank}. {json.dumps(a.text, ensure_ascii=False)}  probability {a.probability:.3f}"
                  f"  score {a.score:.2f}  characters {a.start}-{a.end}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, _answer, args)


if __name__ == "__main__":
    sys.exit(main())
