"""SQuAD v1.1 scoring by the official rules: exact match and token F1, in percent.

The rules (Rajpurkar et al. 2016, the v1.1 evaluation script):

* both answers are *normalised*: lower-cased, every ASCII punctuation character
  (``string.punctuation``) deleted, the whole words ``a``/``an``/``the`` dropped, whitespace
  collapsed. Non-ASCII punctuation (curly quotes, en dashes, ...) is *not* deleted; that is
  part of the published metric, and matching it is what makes our numbers comparable.
* exact match is equality of the normalised strings; F1 is over the multiset of
  normalised tokens. When a question has several reference answers the best score counts.
* a question without a prediction scores 0 and still counts in the denominator.

Unknown ids in the predictions are an error here (the official script silently ignores them):
they almost always mean the predictions belong to another dataset or another split.
"""
from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path
from typing import Iterable, Mapping

__all__ = [
    "SquadEvalError",
    "normalize_answer",
    "exact_match_score",
    "f1_score",
    "metric_max_over_ground_truths",
    "evaluate",
]

_PUNCTUATION = frozenset(string.punctuation)
# \b is Unicode-aware in Python 3, as in the official script.
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class SquadEvalError(ValueError):
    """A dataset or predictions file that cannot be scored."""


def normalize_answer(text: str) -> str:
    """Lower-case, delete ASCII punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    # Articles go after punctuation so that "the," or "(a)" are recognised as words.
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    # This also makes two answers that both normalise to nothing score F1 0 (but EM 1):
    # the official v1.1 behaviour, kept on purpose.
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(metric, prediction: str, ground_truths: Iterable[str]) -> float:
    scores = [metric(prediction, truth) for truth in ground_truths]
    if not scores:
        raise SquadEvalError("a question has no reference answers to score against")
    return max(scores)


def _load_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SquadEvalError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise SquadEvalError(f"{what} file {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise SquadEvalError(f"{what} file {path} is not UTF-8 text: {err}") from None


def _articles(dataset, source: str) -> list:
    """Accept the whole SQuAD JSON object or just its ``data`` list."""
    if isinstance(dataset, Mapping):
        if "data" not in dataset:
            raise SquadEvalError(f"{source}: no 'data' key; is this a SQuAD dataset file?")
        dataset = dataset["data"]
    if not isinstance(dataset, list):
        raise SquadEvalError(f"{source}: 'data' must be a list of articles")
    return dataset


def _reference_answers(articles: list, source: str) -> list[tuple[str, list[str]]]:
    """(qid, reference answer texts) per question, in dataset order.

    A list, not a dict: like the official script, a question id repeated in the dataset
    counts once per occurrence.
    """
    references: list[tuple[str, list[str]]] = []
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    references.append((qa["id"], [answer["text"] for answer in qa["answers"]]))
    except (KeyError, TypeError) as err:
        raise SquadEvalError(
            f"{source}: not in the SQuAD v1.1 layout (data/paragraphs/qas/answers): "
            f"missing or malformed {err}"
        ) from None
    return references


def evaluate(dataset, predictions, *, details: bool = False) -> dict:
    """Score ``predictions`` against ``dataset`` by the official SQuAD v1.1 rules.

    Args:
        dataset: a path to a SQuAD v1.1 JSON file, its parsed object, or its ``data`` list.
        predictions: a path to a predictions JSON file ({qid: answer text}) or that mapping.
        details: also report ``total`` (questions), ``answered`` and ``missing`` counts.

    Returns:
        ``{"exact_match": float, "f1": float}`` in percent (plus the counts when asked).

    Raises:
        SquadEvalError: unreadable files, a dataset not in SQuAD layout, predictions that are
            not a mapping of strings, or prediction ids that are not in the dataset.
    """
    dataset_source = "dataset"
    if isinstance(dataset, (str, Path)):
        dataset_source = str(dataset)
        dataset = _load_json(Path(dataset), "dataset")
    pred_source = "predictions"
    if isinstance(predictions, (str, Path)):
        pred_source = str(predictions)
        predictions = _load_json(Path(predictions), "predictions")
    if not isinstance(predictions, Mapping):
        raise SquadEvalError(
            f"{pred_source}: predictions must be a JSON object mapping question id -> answer text, "
            f"got {type(predictions).__name__}"
        )
    if isinstance(predictions.get("data"), list):
        raise SquadEvalError(
            f"{pred_source}: this is a SQuAD dataset, not predictions ({{question id: answer "
            "text}); were the two arguments swapped?"
        )
    bad = [qid for qid, text in predictions.items() if not isinstance(text, str)]
    if bad:
        shown = repr(predictions[bad[0]])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise SquadEvalError(
            f"{pred_source}: {len(bad)} prediction(s) are not strings, e.g. {bad[0]!r}: {shown}"
        )

    references = _reference_answers(_articles(dataset, dataset_source), dataset_source)
    if not references:
        raise SquadEvalError(f"{dataset_source}: the dataset has no questions")
    known = {qid for qid, _ in references}
    unknown = [qid for qid in predictions if qid not in known]
    if unknown:
        shown = ", ".join(repr(q) for q in unknown[:5])
        raise SquadEvalError(
            f"{pred_source}: {len(unknown)} of {len(predictions)} prediction ids are not in "
            f"{dataset_source} (e.g. {shown}); were the predictions made for another file?"
        )

    exact = f1 = 0.0
    answered = 0
    for qid, ground_truths in references:
        if qid not in predictions:
            continue  # scores 0, still counted in the denominator
        answered += 1
        if not ground_truths:
            raise SquadEvalError(f"{dataset_source}: question {qid!r} has no reference answers")
        prediction = predictions[qid]
        exact += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)

    total = len(references)
    result = {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}
    if details:
        result.update(total=total, answered=answered, missing=total - answered)
    return result
