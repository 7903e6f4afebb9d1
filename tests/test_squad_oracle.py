"""Post-processing: hand-made logits, and the oracle on the real dev set.

The oracle puts +10 on the gold start and end tokens (0 elsewhere) and runs the complete path,
post-processing and official scoring. Whatever it loses is lost in mapping token spans back to
the text (or by the published rules themselves: answers longer than 30 tokens, answers that are
part of a word), never by the model.
"""
import json

import numpy as np
import pytest

from bertlib.squad import (
    RawResult,
    SquadDataError,
    convert_examples_to_features,
    evaluate,
    get_final_text,
    postprocess_predictions,
    read_squad_examples,
)

from bertlib.datasets import find_data

DATA = find_data()  # full-size when found, else the samples shipped with bertlib
DEV, VOCAB = DATA.squad_dev, DATA.vocab


@pytest.fixture(scope="module")
def tokenizer():
    from bertlib.tokenization import load_tokenizer

    return load_tokenizer(VOCAB)


@pytest.mark.parametrize(
    "pred, orig, lower, expected",
    [
        ("steve smith", "Steve Smith's", True, "Steve Smith"),
        ("1895", "(1895-1943).", True, "1895"),
        ("1943", "(1895-1943).", True, "1943"),
        ("cafe", "Café,", True, "Café"),  # accents stripped in the tokens, kept in the answer
        ("san francisco", "San  Francisco", True, "San  Francisco"),  # inner spaces survive
        ("Smith", "Steve Smith's", False, "Smith"),
        ("smith", "Steve Smith's", False, "Steve Smith's"),  # cased: no match -> whole words
        ("xyz", "Steve Smith", True, "Steve Smith"),
    ],
)
def test_get_final_text(pred, orig, lower, expected):
    assert get_final_text(pred, orig, lower) == expected


def _paragraph(context, question="Which one?", qid="q1"):
    return {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": qid, "question": question, "answers": [{"text": context.split()[0], "answer_start": 0}]}]}]}]}


def _logits(feature, start_at=(), end_at=()):
    start = np.zeros(feature.max_seq_length, np.float32)
    end = np.zeros(feature.max_seq_length, np.float32)
    for position, value in start_at:
        start[position] = value
    for position, value in end_at:
        end[position] = value
    return start, end


def test_span_rules_hand_made(tokenizer, tmp_path):
    examples = read_squad_examples(_paragraph("Alpha beta (gamma-delta) epsilon zeta."))
    (f,) = convert_examples_to_features(examples, tokenizer)
    pos = {t: i for i, t in enumerate(f.tokens) if i >= f.doc_offset}
    assert f.tokens[f.doc_offset:] == ["alpha", "beta", "(", "gamma", "-", "delta", ")", "epsilon", "zeta", ".",
                                       "[SEP]"]
    start, end = _logits(
        f,
        start_at=[(1, 50.0), (pos["epsilon"], 9.0), (pos["gamma"], 6.0), (pos["alpha"], 5.0)],
        end_at=[(2, 50.0), (pos["beta"], 9.0), (pos["delta"], 6.0), (pos["zeta"], 2.0)],
    )
    predictions, nbest = postprocess_predictions(
        examples, [f], {f.unique_id: (start, end)}, n_best_size=4, max_answer_length=8,
        output_dir=tmp_path,
    )
    texts = [e["text"] for e in nbest["q1"]]
    # Query positions (50) are never answers; epsilon..beta ends before it starts. Valid, by
    # start + end logit: alpha..beta 14, gamma..delta 12, then two at 11, where the tie goes
    # to the earlier candidate (start epsilon ranks above start alpha): epsilon..zeta first.
    # gamma..delta is part of the word "(gamma-delta)": the brackets are not in the answer.
    assert texts == ["Alpha beta", "gamma-delta", "epsilon zeta", "Alpha beta (gamma-delta"]
    assert predictions["q1"] == "Alpha beta"
    probs = [e["probability"] for e in nbest["q1"]]
    assert sum(probs) == pytest.approx(1.0) and probs == sorted(probs, reverse=True)
    assert nbest["q1"][0]["start_logit"] == 5.0 and nbest["q1"][0]["end_logit"] == 9.0
    assert len(set(texts)) == len(texts)
    assert json.loads((tmp_path / "predictions.json").read_text()) == predictions
    assert json.loads((tmp_path / "nbest_predictions.json").read_text()) == nbest

    # max_answer_length: alpha..zeta is 9 tokens; with a limit of 3 only short spans survive
    start, end = _logits(f, start_at=[(pos["alpha"], 9.0)], end_at=[(pos["zeta"], 9.0)])
    predictions, _ = postprocess_predictions(examples, [f], [RawResult(f.unique_id, start, end)],
                                             max_answer_length=3)
    assert predictions["q1"] != "Alpha beta (gamma-delta) epsilon zeta."
    predictions, _ = postprocess_predictions(examples, [f], [RawResult(f.unique_id, start, end)],
                                             max_answer_length=9)
    assert predictions["q1"] == "Alpha beta (gamma-delta) epsilon zeta"

    # nothing valid among the top-1 -> the reference's placeholder "empty"
    start, end = _logits(f, start_at=[(1, 9.0)], end_at=[(1, 9.0)])
    predictions, nbest = postprocess_predictions(examples, [f], {f.unique_id: (start, end)}, n_best_size=1)
    assert predictions["q1"] == "empty" and nbest["q1"][0]["probability"] == 1.0


def test_only_the_max_context_window_may_start_an_answer(tokenizer):
    context = " ".join(f"w{i}" for i in range(40))
    examples = read_squad_examples(_paragraph(context, question="q"))
    features = convert_examples_to_features(examples, tokenizer, max_seq_length=24, doc_stride=6,
                                            max_query_length=4)
    assert len(features) > 2
    a, b = features[0], features[1]
    # a token in both windows that has more context in b than in a
    overlap = [i for i in range(b.doc_span_length) if b.max_context[i]
               and b.doc_span_start + i < a.doc_span_start + a.doc_span_length]
    k = b.doc_span_start + overlap[0]  # paragraph token index
    in_a, in_b = k - a.doc_span_start + a.doc_offset, k - b.doc_span_start + b.doc_offset
    assert a.tokens[in_a] == b.tokens[in_b] and not a.is_max_context(in_a) and b.is_max_context(in_b)
    results = {f.unique_id: _logits(f) for f in features}
    start, end = _logits(a, start_at=[(in_a, 20.0)], end_at=[(in_a, 20.0)])
    start[start == 0] = -100.0  # no other start in window a can pair with the end there
    results[a.unique_id] = start, end
    results[b.unique_id] = _logits(b, start_at=[(in_b, 1.0)], end_at=[(in_b, 1.0)])
    predictions, nbest = postprocess_predictions(examples, features, results)
    # window a scores 40 but is not the max-context window of that token: b's span wins
    # (the text is the same token in both windows; the logits tell which window won)
    assert predictions["q1"] == b.tokens[in_b].lstrip("#")
    assert nbest["q1"][0]["start_logit"] == 1.0 and nbest["q1"][0]["end_logit"] == 1.0


def test_results_must_match_the_features(tokenizer):
    examples = read_squad_examples(_paragraph("Alpha beta gamma."))
    (f,) = convert_examples_to_features(examples, tokenizer)
    with pytest.raises(SquadDataError, match="no logits for feature 1000000000"):
        postprocess_predictions(examples, [f], {})
    with pytest.raises(SquadDataError, match="no feature has"):
        postprocess_predictions(examples, [f], {f.unique_id: _logits(f), 5: _logits(f)})
    with pytest.raises(SquadDataError, match="logits"):
        postprocess_predictions(examples, [f], {f.unique_id: (np.zeros(3), np.zeros(3))})
    other = read_squad_examples(_paragraph("Alpha beta gamma.", qid="other"))
    with pytest.raises(SquadDataError, match="different files"):
        postprocess_predictions(other, [f], {f.unique_id: _logits(f)})


def test_oracle_on_real_dev_articles(tokenizer):
    """Gold positions as logits -> post-processing -> official scoring: EM/F1 >= 99."""
    dataset = json.loads(DEV.read_text(encoding="utf-8"))
    if DATA.full:
        dataset["data"] = dataset["data"][::3]  # 16 of the 48 articles, spread over the file
    examples = read_squad_examples(dataset)
    features = convert_examples_to_features(examples, tokenizer)
    results = {}
    for f in features:
        gold = [(f.start_position, 10.0)] if f.start_position else []
        results[f.unique_id] = _logits(f, gold, [(f.end_position, 10.0)] if gold else [])
    predictions, nbest = postprocess_predictions(examples, features, results)
    score = evaluate(dataset, predictions, details=True)
    print(f"oracle on {score['total']} dev questions: {score}")
    assert score["total"] == len(examples) > (3000 if DATA.full else 200) and score["missing"] == 0
    assert score["exact_match"] >= 99.0 and score["f1"] >= 99.0
    for qid, entries in nbest.items():
        assert 0 < len(entries) <= 20
        assert entries[0]["text"] == predictions[qid]
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
