"""bertlib.squad.answer and bert-squad-answer: the right span with the right character offsets.

The model is a tiny random BERT (2 layers, hidden 128) with the bert-base-uncased vocab. To know
which span must come back without training, its forward is replaced by one that puts peaked
start/end logits on chosen tokens of the context; everything else (windows, batching,
post-processing, offsets) is the library's. The invariant ``context[start:end] == text`` is also
checked on the untouched random model, whose answers are arbitrary spans.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertlib.datasets import find_data
from bertlib.squad import Answer, QAError, QuestionAnswerer, answer

ROOT = Path(__file__).resolve().parents[1]
VOCAB = find_data().vocab
PROG = "bert-squad-answer"

QUESTION = "Where is the treasure hidden?"
FILLER = "The old fishing town sleeps under grey skies every winter, and nobody goes out. "
ANSWER_TEXT = "Lisbon\n  Lighthouse"  # the context's own characters, newline and spaces included
CONTEXT = (FILLER * 10 + "Sailors say the treasure lies buried near the " + ANSWER_TEXT
           + ", under the third palm. " + FILLER * 2)
ANSWER_START = CONTEXT.index(ANSWER_TEXT)
SMALL = dict(max_seq_length=64, doc_stride=32, max_answer_length=12, device="cpu")

# peaked logits: the answer's first and last token, and a weaker second pair
START_PEAKS = {"lisbon": 10.0, "third": 4.0}
END_PEAKS = {"lighthouse": 10.0, "palm": 4.0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BertForQuestionAnswering in Hugging Face format, with vocab.txt inside."""
    from bertlib.config import BertConfig
    from bertlib.model import BertForQuestionAnswering
    from bertlib.runtime import import_oneflow

    import_oneflow().manual_seed(0)
    path = tmp_path_factory.mktemp("qa") / "model"
    BertForQuestionAnswering(BertConfig.tiny(vocab_size=30522)).save_pretrained(path)
    shutil.copy(VOCAB, path / "vocab.txt")
    return path


@pytest.fixture
def qa(model_dir):
    return QuestionAnswerer(model_dir, batch_size=2, **SMALL)  # 2: several forward passes


@pytest.fixture
def peaked(qa, monkeypatch):
    """Replace the model's forward with peaked logits; return the windows it was shown."""
    from bertlib.model import QuestionAnsweringOutput
    from bertlib.runtime import import_oneflow

    flow = import_oneflow()
    tokenizer = qa._loaded.tokenizer
    start_ids = {tokenizer.token_to_id(t): v for t, v in START_PEAKS.items()}
    end_ids = {tokenizer.token_to_id(t): v for t, v in END_PEAKS.items()}
    assert None not in start_ids and None not in end_ids  # single WordPieces of the vocab
    windows = []

    def forward(input_ids, token_type_ids=None, attention_mask=None):
        ids = input_ids.numpy()                    # int64 [B, S]
        context = token_type_ids.numpy() == 1      # the window's tokens (and its final [SEP])
        windows.extend(ids)
        start, end = np.zeros(ids.shape, np.float32), np.zeros(ids.shape, np.float32)
        for table, logits in ((start_ids, start), (end_ids, end)):
            for token, value in table.items():
                logits[(ids == token) & context] = value
        return QuestionAnsweringOutput(flow.tensor(start), flow.tensor(end))

    monkeypatch.setattr(qa.model, "forward", forward)
    return windows


def check_offsets(answers, context):
    for a in answers:
        assert isinstance(a, Answer)
        assert context[a.start : a.end] == a.text
        assert a.text and a.text == a.text.strip()


# ------------------------------------------------------------------------------- the right span
def test_answer_in_a_later_window_with_character_offsets(qa, peaked):
    answers = qa(QUESTION, CONTEXT)
    assert len(answers) == 1
    best = answers[0]
    # The comma after "Lighthouse" is part of that whitespace word but not of the answer.
    assert (best.text, best.start, best.end) == (ANSWER_TEXT, ANSWER_START,
                                                 ANSWER_START + len(ANSWER_TEXT))
    assert best.score == pytest.approx(20.0)
    check_offsets(answers, CONTEXT)
    # long enough for 3+ windows, and the answer is in none of the first two
    lisbon = qa._loaded.tokenizer.token_to_id("lisbon")
    assert len(peaked) >= 3
    assert min(i for i, w in enumerate(peaked) if lisbon in w) >= 2


def test_top_k_order_and_probabilities(qa, peaked):
    answers = qa(QUESTION, CONTEXT, top_k=4)
    assert len(answers) == 4
    check_offsets(answers, CONTEXT)
    assert answers[0].text == ANSWER_TEXT
    second_end = CONTEXT.index("palm") + len("palm")
    assert (answers[1].text, answers[1].start, answers[1].end) == (
        CONTEXT[ANSWER_START:second_end], ANSWER_START, second_end)
    assert answers[1].score == pytest.approx(14.0)
    scores = [a.score for a in answers]
    probabilities = [a.probability for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 < p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-9
    assert len({a.text for a in answers}) == 4
    assert answers[0].to_dict() == {"text": ANSWER_TEXT, "score": answers[0].score,
                                    "probability": answers[0].probability,
                                    "start": ANSWER_START, "end": ANSWER_START + len(ANSWER_TEXT)}


def test_batch_of_pairs_matches_one_by_one(qa, peaked):
    short = "Nobody knows. It lies near the Lisbon Lighthouse."
    pairs = [(QUESTION, CONTEXT), ("Where?", short), (QUESTION, CONTEXT)]
    batch = qa(pairs, top_k=2)
    assert len(batch) == 3
    assert batch[0] == batch[2] == qa(QUESTION, CONTEXT, top_k=2)
    assert batch[1] == qa("Where?", short, top_k=2)
    assert batch[1][0].text == "Lisbon Lighthouse"
    assert short[batch[1][0].start : batch[1][0].end] == "Lisbon Lighthouse"
    assert qa([], top_k=1) == []


def test_answer_one_shot_shares_the_cached_model(qa, peaked, model_dir):
    # the same directory and settings reuse the loaded (here: patched) model
    assert QuestionAnswerer(model_dir, **SMALL).model is qa.model
    got = answer(model_dir, QUESTION, CONTEXT, top_k=1, **SMALL)
    assert [(a.text, a.start) for a in got] == [(ANSWER_TEXT, ANSWER_START)]


# ------------------------------------------------------------- the invariant on the real model
@pytest.mark.parametrize("context", [
    CONTEXT,
    "Caf\u00e9  Z\u00fcrich\u00a0Stra\u00dfe (1895-1943). \u201cQuoted\u201d words;\tTABS\r\nand "
    "CJK \u5317\u4eac text, e.g. U.S.A.'s 3.5% rate\u2014dashes\u202fnarrow space.",
])
def test_offsets_hold_on_the_random_model(model_dir, context):
    answers = answer(model_dir, "What is it?", context, top_k=8, **SMALL)
    assert 1 <= len(answers) <= 8
    check_offsets(answers, context)
    assert sum(a.probability for a in answers) <= 1 + 1e-9


# ------------------------------------------------------------------- model directory and input
def test_vocab_from_the_argument_or_a_clear_error(model_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    with pytest.raises(QAError, match=r"has no vocab\.txt and no vocab_file"):
        QuestionAnswerer(bare, **SMALL)
    qa = QuestionAnswerer(bare, vocab_file=VOCAB, **SMALL)
    assert qa.vocab_file == Path(VOCAB) and qa.do_lower_case is True  # uncased vocab
    other = tmp_path / "other_vocab.txt"
    other.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    with pytest.raises(QAError, match="differs from"):
        QuestionAnswerer(model_dir, vocab_file=other, **SMALL)


def test_lower_casing_from_tokenizer_config(model_dir, tmp_path):
    cased = tmp_path / "cased"
    shutil.copytree(model_dir, cased)
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    # recorded as cased, but the vocab is uncased: refused rather than answer with [UNK]s
    with pytest.raises(QAError, match="uncased"):
        QuestionAnswerer(cased, **SMALL)
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    with pytest.raises(QAError, match="records do_lower_case=True"):
        QuestionAnswerer(cased, do_lower_case=False, **SMALL)
    assert QuestionAnswerer(cased, **SMALL).do_lower_case is True


def test_bad_directories_settings_and_inputs(model_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    with pytest.raises(QAError, match="not found"):
        QuestionAnswerer(tmp_path / "missing")
    headless = tmp_path / "headless"
    shutil.copytree(model_dir, headless)
    tensors = load_file(str(model_dir / "model.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("qa_outputs")},
              str(headless / "model.safetensors"))
    with pytest.raises(QAError, match="no question-answering head"):
        QuestionAnswerer(headless)
    with pytest.raises(QAError, match="max_position_embeddings"):
        QuestionAnswerer(model_dir, max_seq_length=1024)
    with pytest.raises(QAError, match="doc_stride"):
        QuestionAnswerer(model_dir, doc_stride=0)
    qa = QuestionAnswerer(model_dir, **SMALL)
    with pytest.raises(QAError, match="question is empty"):
        qa("   ", CONTEXT)
    with pytest.raises(QAError, match="context is empty"):
        qa(QUESTION, "\n ")
    with pytest.raises(QAError, match="top_k"):
        qa(QUESTION, CONTEXT, top_k=0)


# ----------------------------------------------------------------------------------------- CLI
def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "bertlib.cli.squad_answer", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, input=stdin, timeout=120)


def test_cli_json_end_to_end(model_dir, tmp_path):
    context_file = tmp_path / "context.txt"
    context_file.write_text(CONTEXT, encoding="utf-8")
    proc = cli("--model_dir", model_dir, "--question", QUESTION, "--question", "Who says so?",
               "--context_file", context_file, "--top_k", 3, "--max_seq_length", 64,
               "--doc_stride", 32, "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["question"] for r in lines] == [QUESTION, "Who says so?"]
    for record in lines:
        assert 1 <= len(record["answers"]) <= 3
        for a in record["answers"]:
            assert set(a) == {"text", "score", "probability", "start", "end"}
            assert CONTEXT[a["start"] : a["end"]] == a["text"]
    # the API gives the same answers
    api = answer(model_dir, QUESTION, CONTEXT, top_k=3, max_seq_length=64, doc_stride=32,
                 device="cpu")
    assert [a.to_dict()["text"] for a in api] == [a["text"] for a in lines[0]["answers"]]


@pytest.mark.parametrize("args, message", [
    (["--model_dir", "{tmp}/missing", "--question", "Who?", "--context", "Text."], "not found"),
    (["--model_dir", "{bare}", "--question", "Who?", "--context", "Text."], "--vocab_file"),
    (["--model_dir", "{model}", "--question", "  ", "--context", "Text."], "question is empty"),
    (["--model_dir", "{model}", "--question", "Who?"], "--context"),
    (["--model_dir", "{model}", "--question", "Who?", "--context_file", "{tmp}/none.txt"],
     "none.txt"),
])
def test_cli_errors_are_one_line(model_dir, tmp_path, args, message):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    args = [a.format(tmp=tmp_path, bare=bare, model=model_dir) for a in args]
    proc = cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: ") and message in lines[0]


def test_cli_help_explains_every_flag():
    script = Path(sys.executable).with_name(PROG)
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bertlib.cli.squad_answer"]
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--model_dir", "--question", "--context", "--context_file", "--top_k",
                 "--vocab_file", "--do_lower_case", "--max_seq_length", "--doc_stride",
                 "--max_query_length", "--max_answer_length", "--batch_size", "--device", "--json"):
        assert flag in proc.stdout
    from bertlib.cli.squad_answer import build_parser

    undocumented = [a.option_strings for a in build_parser()._actions if not a.help]
    assert undocumented == []
