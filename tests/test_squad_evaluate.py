"""Official SQuAD v1.1 scoring, checked on cases worked out by hand."""
import json

import pytest

from bertlib.cli import squad_evaluate as cli
from bertlib.squad.evaluate import (
    SquadEvalError,
    evaluate,
    exact_match_score,
    f1_score,
    metric_max_over_ground_truths,
    normalize_answer,
)

from bertlib.datasets import FULL_DATA_HINT, find_data

DATA = find_data()  # full-size when found, else the samples shipped with bertlib
DEV = DATA.squad_dev


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  An   apple,\tthe\npear ", "apple pear"),
        ("theater Anne", "theater anne"),  # articles only as whole words
        ("(a)", ""),  # punctuation goes first, then the bare article
        ("the,end", "theend"),  # punctuation is deleted, not turned into a space
        ("don't gold-themed 24.5%", "dont goldthemed 245"),
        ("!!! ...", ""),  # punctuation only
        ("a an the", ""),  # articles only
        ("“Quoted” 24–10 — ¿qué?", "“quoted” 24–10 — ¿qué"),  # non-ASCII punctuation stays
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match_score("the Denver Broncos", "Denver Broncos.") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0
    assert exact_match_score("“Denver”", "Denver") == 0.0  # curly quotes are kept


def test_f1_hand_computed():
    # 2 of 3 predicted tokens are right, both gold tokens found: P=2/3, R=1, F1=0.8
    assert f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    # multisets: x y y vs y y z share y twice: P=R=2/3
    assert f1_score("x y y", "y y z") == pytest.approx(2 / 3)
    # a repeated token counts only as often as it occurs in the gold: P=1/3, R=1 -> 0.5
    assert f1_score("y y y", "y") == pytest.approx(0.5)
    assert f1_score("Denver", "Carolina Panthers") == 0.0


def test_empty_and_degenerate_answers():
    assert exact_match_score("", "Denver") == 0.0
    assert f1_score("", "Denver") == 0.0
    # Both sides normalise to nothing: exact match, but F1 is 0 (the official v1.1 behaviour).
    assert exact_match_score("the", "a") == 1.0
    assert f1_score("the", "a") == 0.0
    assert exact_match_score("...", "!") == 1.0
    assert f1_score("...", "!") == 0.0


def test_max_over_references():
    golds = ["Denver Broncos", "the Denver Broncos team"]
    assert metric_max_over_ground_truths(exact_match_score, "Broncos", golds) == 0.0
    # vs "denver broncos": P=1, R=1/2 -> 2/3; vs "denver broncos team": P=1, R=1/3 -> 1/2
    assert metric_max_over_ground_truths(f1_score, "Broncos", golds) == pytest.approx(2 / 3)
    assert metric_max_over_ground_truths(exact_match_score, "Broncos", golds + ["Broncos"]) == 1.0


def _dataset():
    context = "The Denver Broncos beat the Carolina Panthers 24–10 in Santa Clara."
    qas = [
        {"id": "q1", "question": "Who won?",
         "answers": [{"text": "Denver Broncos", "answer_start": 4},
                     {"text": "The Denver Broncos", "answer_start": 0}]},
        {"id": "q2", "question": "Who lost?",
         "answers": [{"text": "Carolina Panthers", "answer_start": 28}]},
        {"id": "q3", "question": "Where?",
         "answers": [{"text": "Santa Clara", "answer_start": 56}]},
    ]
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_evaluate_counts_missing_predictions_as_zero():
    preds = {"q1": "the denver broncos", "q2": "Carolina Panthers team"}  # q3 missing
    result = evaluate(_dataset(), preds, details=True)
    # q1: EM 1, F1 1; q2: EM 0, F1 0.8; q3: 0 and 0; over 3 questions.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(180 / 3)
    assert (result["total"], result["answered"], result["missing"]) == (3, 2, 1)
    assert set(evaluate(_dataset(), preds)) == {"exact_match", "f1"}


def test_evaluate_from_files(tmp_path):
    data, preds = tmp_path / "d.json", tmp_path / "p.json"
    data.write_text(json.dumps(_dataset()))
    preds.write_text(json.dumps({"q1": "Denver Broncos", "q2": "Carolina Panthers", "q3": "Santa Clara"}))
    assert evaluate(data, preds) == {"exact_match": 100.0, "f1": 100.0}
    assert evaluate(str(data), {}) == {"exact_match": 0.0, "f1": 0.0}


def test_unknown_ids_are_named():
    with pytest.raises(SquadEvalError, match=r"2 of 3 prediction ids.*'nope'.*'other'"):
        evaluate(_dataset(), {"q1": "x", "nope": "y", "other": "z"})


@pytest.mark.parametrize(
    "preds, message",
    [
        (["q1"], "must be a JSON object"),
        ({"q1": 3}, "not strings"),
        (_dataset(), "swapped"),
    ],
)
def test_bad_predictions(preds, message):
    with pytest.raises(SquadEvalError, match=message):
        evaluate(_dataset(), preds)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"q1": "x"')
    with pytest.raises(SquadEvalError, match="not valid JSON"):
        evaluate(_dataset(), bad)
    with pytest.raises(SquadEvalError, match="not found"):
        evaluate(tmp_path / "missing.json", {})
    with pytest.raises(SquadEvalError, match="no 'data' key"):
        evaluate({"version": "1.1"}, {})


def _dev_questions():
    dataset = json.loads(DEV.read_text(encoding="utf-8"))
    return dataset, [qa for a in dataset["data"] for p in a["paragraphs"] for qa in p["qas"]]


def test_real_dev_gold_answers_score_100():
    dataset, qas = _dev_questions()
    first = {qa["id"]: qa["answers"][0]["text"] for qa in qas}
    assert len(first) == (10570 if DATA.full else 220)
    assert evaluate(dataset, first) == {"exact_match": 100.0, "f1": 100.0}
    # Answering every question with the first reference of the question before it scores low.
    shifted = {qa["id"]: qas[i - 1]["answers"][0]["text"] for i, qa in enumerate(qas)}
    assert evaluate(dataset, shifted)["exact_match"] < 10


@pytest.mark.skipif(not DATA.full, reason=f"needs the official dev set; {FULL_DATA_HINT}")
def test_official_dev_set_reference_with_empty_normal_form():
    dataset, qas = _dev_questions()
    # The last reference of question 57340d124776f419006617bf is ".", which normalises to
    # nothing: predicting it is an exact match with F1 0 under the official rules.
    last = {qa["id"]: qa["answers"][-1]["text"] for qa in qas}
    assert last["57340d124776f419006617bf"] == "."
    result = evaluate(dataset, last)
    assert result["exact_match"] == 100.0
    assert result["f1"] == pytest.approx(100 * 10569 / 10570)


def test_cli(tmp_path, capsys):
    data, preds = tmp_path / "d.json", tmp_path / "p.json"
    data.write_text(json.dumps(_dataset()))
    preds.write_text(json.dumps({"q1": "Denver Broncos", "q2": "Carolina"}))
    assert cli.main([str(data), str(preds)]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx((1 + 2 / 3) / 3 * 100)}
    assert "1 of 3 questions have no prediction" in err

    preds.write_text(json.dumps({"zzz": "x"}))
    assert cli.main([str(data), str(preds)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "'zzz'" in err and "Traceback" not in err
