"""Start/end logits -> answer texts: the post-processing published with BERT.

For every question, over all windows (features) of its context:

1. take the ``n_best_size`` highest start logits and the ``n_best_size`` highest end logits;
2. keep the pairs that form a valid answer: both inside the context part of the window, start in
   the window where that token has its maximum context, end >= start, at most
   ``max_answer_length`` tokens;
3. rank them by start + end logit; map each, best first, back to the original text until
   ``n_best_size`` distinct texts are found;
4. softmax over their scores gives the n-best probabilities; the first one is the prediction.

Mapping back (step 3) is the delicate part. The token span gives whole original words (through
``token_to_orig_map``), but the answer may be a piece of a word: tokens ``1895`` out of the word
``(1895-1943).``. The de-WordPiece'd token text ("1895") is lower-cased and accent-stripped, so it
cannot be searched in the original words directly. Instead the original words are run through
the same normalisation and punctuation splitting (without WordPiece), the token text is found in
that, and the match is carried back to the original characters through a character map that
ignores spaces, which is valid whenever normalisation kept the number of non-space characters.
When anything fails the whole original words are returned, as in the reference.
"""
from __future__ import annotations

import collections
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from .examples import SquadDataError, SquadExample
from .features import SquadFeature

__all__ = [
    "RawResult",
    "get_final_text",
    "final_text_span",
    "postprocess_predictions",
    "write_predictions",
]


class RawResult(NamedTuple):
    """The model's output for one feature: float [max_seq_length] logits each."""

    unique_id: int
    start_logits: np.ndarray
    end_logits: np.ndarray


@lru_cache(maxsize=2)
def _basic_tokenizer(do_lower_case: bool):
    """BERT's "basic" tokenisation (clean, lower-case + strip accents, split punctuation and
    CJK characters) without WordPiece, from the ``tokenizers`` components."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def tokenize(text: str) -> list[str]:
        return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]

    return tokenize


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool = True) -> str:
    """The part of ``orig_text`` (original words) that the normalised ``pred_text`` covers.

    >>> get_final_text("steve smith", "Steve Smith's")
    'Steve Smith'
    """
    start, end = final_text_span(pred_text, orig_text, do_lower_case)
    return orig_text[start:end]


def final_text_span(pred_text: str, orig_text: str, do_lower_case: bool = True) -> tuple[int, int]:
    """``[start, end)`` in ``orig_text`` of :func:`get_final_text`'s answer (all of ``orig_text``
    where the normalised texts cannot be lined up)."""
    whole = (0, len(orig_text))
    tok_text = " ".join(_basic_tokenizer(do_lower_case)(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return whole
    end = start + len(pred_text) - 1
    # Characters are matched up by their rank among the non-space characters, which is only
    # meaningful if normalisation kept every non-space character.
    if len(orig_text) - orig_text.count(" ") != len(tok_text) - tok_text.count(" "):
        return whole
    if tok_text[start] == " " or tok_text[end] == " ":
        return whole
    orig_positions = [i for i, ch in enumerate(orig_text) if ch != " "]
    return (orig_positions[start - tok_text.count(" ", 0, start)],
            orig_positions[end - tok_text.count(" ", 0, end)] + 1)


def _top_indexes(logits: np.ndarray, n: int) -> np.ndarray:
    # Stable: among equal logits the lower position comes first, as in the reference.
    return np.argsort(-logits, kind="stable")[:n]


def _valid_spans(feature: SquadFeature, starts: np.ndarray, ends: np.ndarray,
                 max_answer_length: int) -> list[tuple[int, int]]:
    """(start, end) pairs, start-major in the given orders, that can be an answer: both in the
    window's context tokens, start in its max-context window, 1..max_answer_length tokens."""
    # Window-relative indices; everything outside the context tokens is out of range.
    s = starts - feature.doc_offset
    e = ends - feature.doc_offset
    s_ok = (s >= 0) & (s < feature.doc_span_length)
    s_ok[s_ok] = feature.max_context[s[s_ok]]
    e_ok = (e >= 0) & (e < feature.doc_span_length)
    length = ends[None, :] - starts[:, None] + 1  # [n_start, n_end]
    ok = s_ok[:, None] & e_ok[None, :] & (length >= 1) & (length <= max_answer_length)
    rows, cols = np.nonzero(ok)  # row-major: the reference's nested loop order
    return list(zip(starts[rows].tolist(), ends[cols].tolist()))


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _results_by_id(results) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Accept {unique_id: (start, end)} or an iterable of RawResult-like items."""
    if isinstance(results, Mapping):
        items = ((uid, *logits) for uid, logits in results.items())
    else:
        items = (
            (r.unique_id, r.start_logits, r.end_logits) if hasattr(r, "unique_id") else tuple(r)
            for r in results
        )
    table = {}
    for uid, start, end in items:
        table[int(uid)] = (
            np.asarray(start, dtype=np.float32).reshape(-1),
            np.asarray(end, dtype=np.float32).reshape(-1),
        )
    return table


class _Candidate(NamedTuple):
    feature_index: int
    start: int
    end: int
    start_logit: float
    end_logit: float


def postprocess_predictions(
    examples: Sequence[SquadExample],
    features: Sequence[SquadFeature],
    results,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    do_lower_case: bool = True,
    output_dir=None,
) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """Choose an answer text per question from the model's start/end logits.

    Args:
        examples: the examples the features were made from (same order).
        features: from ``convert_examples_to_features`` / ``load_eval_features``.
        results: ``{unique_id: (start_logits, end_logits)}`` or an iterable of
            :class:`RawResult`; logits are float [max_seq_length] (or at least as long as each
            feature's tokens). Every feature needs a result.
        n_best_size: candidates kept per question (and per logit list).
        max_answer_length: longest answer, in tokens.
        do_lower_case: the tokenizer's setting (used to align predictions with the text).
        output_dir: if given, ``predictions.json`` and ``nbest_predictions.json`` go there.

    Returns:
        ``(predictions, nbest)``: ``{qid: text}`` and ``{qid: [{"text", "probability",
        "start_logit", "end_logit"}, ...]}`` best first.
    """
    table = _results_by_id(results)
    known = {f.unique_id for f in features}
    stray = [uid for uid in table if uid not in known]
    if stray:
        raise SquadDataError(
            f"{len(stray)} results have unique ids that no feature has (e.g. {stray[:3]}): "
            "logits from another data set?"
        )
    by_example: dict[int, list[SquadFeature]] = collections.defaultdict(list)
    for feature in features:
        by_example[feature.example_index].append(feature)

    predictions: dict[str, str] = {}
    all_nbest: dict[str, list[dict]] = {}
    for example_index, example in enumerate(examples):
        ex_features = by_example.get(example_index, [])
        if ex_features and ex_features[0].qas_id != example.qas_id:
            raise SquadDataError(
                f"feature {ex_features[0].unique_id} belongs to question "
                f"{ex_features[0].qas_id!r}, but example {example_index} is {example.qas_id!r}: "
                "features and examples come from different files"
            )
        candidates = _candidates(example, ex_features, table, n_best_size, max_answer_length)
        nbest = _nbest(example, ex_features, candidates, n_best_size, do_lower_case)
        probabilities = _softmax([e["start_logit"] + e["end_logit"] for e in nbest])
        all_nbest[example.qas_id] = [
            {"text": e["text"], "probability": p,
             "start_logit": e["start_logit"], "end_logit": e["end_logit"]}
            for e, p in zip(nbest, probabilities)
        ]
        predictions[example.qas_id] = nbest[0]["text"]

    if output_dir is not None:
        write_predictions(predictions, all_nbest, output_dir)
    return predictions, all_nbest


def _candidates(example, ex_features, table, n_best_size: int, max_answer_length: int) -> list:
    """Every valid (window, start, end) span among each window's top starts and ends, best first."""
    candidates: list[_Candidate] = []
    for feature_index, feature in enumerate(ex_features):
        if feature.unique_id not in table:
            raise SquadDataError(
                f"no logits for feature {feature.unique_id} (question {example.qas_id!r}); "
                "every eval feature needs a result"
            )
        start_logits, end_logits = table[feature.unique_id]
        if len(start_logits) < feature.num_tokens or len(end_logits) < feature.num_tokens:
            raise SquadDataError(
                f"feature {feature.unique_id}: {len(start_logits)}/{len(end_logits)} logits "
                f"for {feature.num_tokens} tokens"
            )
        for start, end in _valid_spans(
            feature, _top_indexes(start_logits, n_best_size),
            _top_indexes(end_logits, n_best_size), max_answer_length,
        ):
            candidates.append(
                _Candidate(feature_index, start, end,
                           float(start_logits[start]), float(end_logits[end]))
            )
    # sorted() is stable: equal scores keep window/start/end order, as in the reference.
    candidates.sort(key=lambda c: c.start_logit + c.end_logit, reverse=True)
    return candidates


def _nbest(example, ex_features, candidates, n_best_size: int, do_lower_case: bool) -> list[dict]:
    """The first ``n_best_size`` distinct answer texts of ``candidates``, mapped back to the words."""
    nbest: list[dict] = []
    seen: set[str] = set()
    tokens_of: dict[int, list[str]] = {}  # Feature.tokens is built on each access
    for c in candidates:
        if len(nbest) >= n_best_size:
            break
        feature = ex_features[c.feature_index]
        if c.feature_index not in tokens_of:
            tokens_of[c.feature_index] = feature.tokens
        pieces = tokens_of[c.feature_index][c.start : c.end + 1]
        tok_text = " ".join(pieces).replace(" ##", "").replace("##", "")
        tok_text = " ".join(tok_text.split())
        first_word = feature.orig_word_index(c.start)
        last_word = feature.orig_word_index(c.end)
        orig_text = " ".join(example.doc_tokens[first_word : last_word + 1])
        text = get_final_text(tok_text, orig_text, do_lower_case)
        if text in seen:
            continue
        seen.add(text)
        nbest.append({"text": text, "start_logit": c.start_logit, "end_logit": c.end_logit})
    if not nbest:
        # The reference's placeholder when no window produced a valid span.
        nbest.append({"text": "empty", "start_logit": 0.0, "end_logit": 0.0})
    return nbest


def write_predictions(predictions: dict, nbest: dict, output_dir) -> tuple[Path, Path]:
    """Write ``predictions.json`` and ``nbest_predictions.json``; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = output_dir / "predictions.json", output_dir / "nbest_predictions.json"
    for path, obj in zip(paths, (predictions, nbest)):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4, ensure_ascii=False)
            f.write("\n")
    return paths
