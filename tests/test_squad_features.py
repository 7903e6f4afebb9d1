"""SQuAD JSON -> examples -> features -> OFRecords, on the real data where it matters."""
import json

import numpy as np
import pytest

from bertlib.ofrecord import iter_records, validate_data_dir
from bertlib.squad import (
    FIRST_UNIQUE_ID,
    MANIFEST_NAME,
    SquadDataError,
    check_vocab_case,
    convert_examples_to_features,
    load_eval_features,
    read_squad_examples,
    squad_eval_schema,
    squad_train_schema,
    write_squad_ofrecords,
)
from bertlib.squad.features import _best_span_per_token, _doc_spans

from bertlib.datasets import FULL_DATA_HINT, find_data

DATA = find_data()  # full-size when found, else the samples shipped with bertlib
DEV, TRAIN, VOCAB = DATA.squad_dev, DATA.squad_train, DATA.vocab
needs_full_dev = pytest.mark.skipif(not DATA.full, reason=f"needs the official dev set; {FULL_DATA_HINT}")


@pytest.fixture(scope="module")
def tokenizer():
    from bertlib.tokenization import load_tokenizer

    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def dev(tokenizer):
    examples = read_squad_examples(DEV)
    return examples, convert_examples_to_features(examples, tokenizer)


@pytest.fixture(scope="module")
def train(tokenizer):
    """The first 5 real training articles (~1,400 questions; the 3 articles, 456 questions, of the sample)."""
    dataset = json.loads(TRAIN.read_text(encoding="utf-8"))
    dataset["data"] = dataset["data"][:5]
    examples = read_squad_examples(dataset, is_training=True)
    return examples, convert_examples_to_features(examples, tokenizer, is_training=True)


def _subset_file(tmp_path, source, articles, name="subset.json"):
    dataset = json.loads(source.read_text(encoding="utf-8"))
    dataset["data"] = dataset["data"][:articles]
    path = tmp_path / name
    path.write_text(json.dumps(dataset))
    return path


def _detok(pieces):
    return " ".join(pieces).replace(" ##", "").replace("##", "")


# ---- counts ----------------------------------------------------------------------------------


@needs_full_dev
def test_full_dev_set_gives_the_published_10833_features(dev):
    examples, features = dev
    assert len(examples) == 10570
    assert len(features) == 10833
    assert [f.unique_id for f in features] == list(range(FIRST_UNIQUE_ID, FIRST_UNIQUE_ID + 10833))
    # every example has at least one window, features come in example order
    assert sorted({f.example_index for f in features}) == list(range(10570))
    assert all(a.example_index <= b.example_index for a, b in zip(features, features[1:]))


def test_feature_layout(dev, tokenizer):
    examples, features = dev
    f = features[0]
    ids = f.input_ids
    assert ids.dtype == np.int32 and ids.shape == (384,)
    assert f.tokens[0] == "[CLS]" and f.tokens[f.doc_offset - 1] == "[SEP]" and f.tokens[-1] == "[SEP]"
    assert [tokenizer.token_to_id(t) for t in f.tokens] == ids[: f.num_tokens].tolist()
    assert not ids[f.num_tokens :].any()
    assert f.input_mask.tolist() == [1] * f.num_tokens + [0] * (384 - f.num_tokens)
    assert f.segment_ids.tolist() == [0] * f.doc_offset + [1] * (f.num_tokens - f.doc_offset) + [0] * (
        384 - f.num_tokens
    )
    # [CLS] query [SEP]: the first question's WordPieces, then the context starts
    query = tokenizer.encode(examples[0].question_text, add_special_tokens=False).tokens
    assert f.query_tokens == query and f.doc_offset == len(query) + 2
    if DATA.full:  # "Which NFL team represented the AFC at Super Bowl 50?" -> 11 query tokens
        assert f.query_tokens[:3] == ["which", "nfl", "team"] and f.doc_offset == 13
    # token_to_orig_map points each context token at its whitespace word
    words = examples[0].doc_tokens
    for position, word in f.token_to_orig_map.items():
        piece = f.tokens[position].lstrip("#")
        assert piece in words[word].lower(), (piece, words[word])


# ---- training labels -------------------------------------------------------------------------


def test_training_positions_land_on_the_answer(train, tokenizer):
    examples, features = train
    assert len(examples) > (1000 if DATA.full else 400)
    exact = 0
    answered = set()
    for f in features:
        example = examples[f.example_index]
        if f.start_position == 0:
            assert f.end_position == 0
            continue
        answered.add(f.example_index)
        assert f.doc_offset <= f.start_position <= f.end_position < f.num_tokens - 1
        span = _detok(f.tokens[f.start_position : f.end_position + 1])
        answer = _detok(tokenizer.encode(example.orig_answer_text, add_special_tokens=False).tokens)
        # Sub-word answers ("gold" of "golden") can only be approximated by whole tokens.
        assert answer in span, (example.qas_id, answer, span)
        exact += span == answer
    assert len(answered) == len(examples)  # every question has a window with its answer
    assert exact / len(answered) > 0.99


def test_window_without_the_answer_points_at_cls(tokenizer):
    context = " ".join(f"w{i}" for i in range(60)) + " target"
    dataset = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q", "question": "where?", "answers": [{"text": "target", "answer_start": len(context) - 6}]}
    ]}]}]}
    examples = read_squad_examples(dataset, is_training=True)
    features = convert_examples_to_features(
        examples, tokenizer, max_seq_length=32, doc_stride=8, max_query_length=8, is_training=True
    )
    assert len(features) > 3
    assert all(f.start_position == f.end_position == 0 for f in features[:-1])
    last = features[-1]
    assert last.tokens[last.start_position : last.end_position + 1] == ["target"]


# ---- windows and max context ------------------------------------------------------------------


def test_doc_stride_windows_overlap(dev, tokenizer):
    examples, _ = dev
    some = [e for e in examples[:400]]
    features = convert_examples_to_features(some, tokenizer, max_seq_length=64, doc_stride=16, max_query_length=16)
    by_example = {}
    for f in features:
        by_example.setdefault(f.example_index, []).append(f)
    multi = 0
    for index, windows in by_example.items():
        n_doc = len(windows[0].context.tokens)
        room = 64 - len(windows[0].query_tokens) - 3
        assert windows[0].doc_span_start == 0
        assert windows[-1].doc_span_start + windows[-1].doc_span_length == n_doc
        for a, b in zip(windows, windows[1:]):
            multi += 1
            assert a.doc_span_length == room
            assert b.doc_span_start - a.doc_span_start == 16
            # the overlap holds the same tokens in both windows
            overlap = a.doc_span_start + a.doc_span_length - b.doc_span_start
            assert overlap == room - 16
            tail = a.tokens[a.doc_offset + 16 : a.doc_offset + a.doc_span_length]
            head = b.tokens[b.doc_offset : b.doc_offset + overlap]
            assert tail == head
        # every context token is the max-context token of exactly one window
        count = np.zeros(n_doc, dtype=int)
        for f in windows:
            count[f.doc_span_start : f.doc_span_start + f.doc_span_length] += f.max_context
        assert (count == 1).all()
    assert multi > 1000


def _best_span_by_definition(spans, position):
    best, best_score = None, None
    for k, (start, length) in enumerate(spans):
        end = start + length - 1
        if start <= position <= end:
            score = min(position - start, end - position) + 0.01 * length
            if best_score is None or score > best_score:
                best, best_score = k, score
    return best


def test_max_context_hand_checked():
    spans = _doc_spans(10, 4, 2)
    assert spans == [(0, 4), (2, 4), (4, 4), (6, 4)]
    # token 3: window 0 gives min(3, 0), window 1 min(1, 2) -> window 1; token 2: window 0
    # gives min(2, 1) = 1 vs window 1 min(0, 3) = 0 -> window 0; token 9 only in window 3.
    assert _best_span_per_token(spans, 10).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    # a short last window: (0,5),(3,5),(6,4) for 10 tokens; ties go to the earlier window
    spans = _doc_spans(10, 5, 3)
    assert spans == [(0, 5), (3, 5), (6, 4)]
    for n, length, stride in [(10, 5, 3), (37, 12, 5), (50, 7, 7), (9, 20, 4), (300, 100, 128)]:
        spans = _doc_spans(n, length, stride)
        assert _best_span_per_token(spans, n).tolist() == [
            _best_span_by_definition(spans, p) for p in range(n)
        ]


def test_max_context_on_the_real_dev_set(dev, tokenizer):
    examples, features = dev
    if not DATA.full:  # the sample's paragraphs fit in 384 tokens: cut them into 128-token windows
        features = convert_examples_to_features(examples, tokenizer, max_seq_length=128, doc_stride=64)
    by_example = {}
    for f in features:
        by_example.setdefault(f.example_index, []).append(f)
    multi = [w for w in by_example.values() if len(w) > 1]
    # examples whose context needs 2+ windows: 183 in the official dev set at 384 tokens
    assert len(multi) == 183 if DATA.full else len(multi) > 100
    for windows in multi:
        n_doc = len(windows[0].context.tokens)
        spans = [(f.doc_span_start, f.doc_span_length) for f in windows]
        best = [_best_span_by_definition(spans, p) for p in range(n_doc)]
        for k, f in enumerate(windows):
            expected = [best[p] == k for p in range(f.doc_span_start, f.doc_span_start + f.doc_span_length)]
            assert f.max_context.tolist() == expected
            # the dict view the reference code used agrees with the array
            assert f.token_is_max_context == {f.doc_offset + i: e for i, e in enumerate(expected)}


# ---- bad input ------------------------------------------------------------------------------


def _write(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _one(context="Alpha beta gamma.", qa=None, **paragraph):
    qa = qa if qa is not None else {"id": "q1", "question": "What?", "answers": [{"text": "beta", "answer_start": 6}]}
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa], **paragraph}]}]}


def test_a_good_minimal_file(tmp_path):
    (example,) = read_squad_examples(_write(tmp_path, _one()), is_training=True)
    assert example.doc_tokens == ["Alpha", "beta", "gamma."]
    assert (example.start_position, example.end_position) == (1, 1)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ('{"data": [', r"bad\.json: malformed JSON at line 1 column"),
        ('[1, 2]', "expected a JSON object with a 'data' list"),
        ({"version": "1.1"}, "missing key 'data'"),
        ({"data": [{"title": "T"}]}, r"article 0 \('T'\): missing key 'paragraphs'"),
        ({"data": [{"title": "T", "paragraphs": [{"qas": []}]}]}, "paragraph 0: missing key 'context'"),
        (_one(qa={"id": "q1", "answers": []}), r"question 'q1' .*missing key 'question'"),
        (_one(qa={"id": "q1", "question": "?", "answers": [{"text": "beta"}]}), "missing key 'answer_start'"),
        (_one(qa={"id": "q1", "question": "?", "answers": [{"text": "beta", "answer_start": "6"}]}),
         "'answer_start' must be int, got str"),
        (_one(qa={"id": "q1", "question": "?", "answers": [{"text": "beta", "answer_start": 7}]}),
         r"question 'q1'.*answer 0: answer text 'beta' does not match the context at answer_start=7 "
         r"\(the context there reads 'eta '\)"),
        (_one(qa={"id": "q1", "question": "?", "answers": [{"text": "beta", "answer_start": 99}]}),
         "does not match the context at answer_start=99"),
        (_one(qa={"id": "q1", "question": "?", "answers": [], "is_impossible": True}), "SQuAD v2.0"),
        (_one(qa={"id": "q1", "question": "?", "answers": []}), "no answers, but training needs one"),
        ({"data": []}, "no questions found"),
    ],
)
def test_bad_squad_files_are_named(tmp_path, content, pattern):
    path = _write(tmp_path, content)
    with pytest.raises(SquadDataError, match=pattern) as info:
        read_squad_examples(path, is_training=True)
    assert str(path) in str(info.value)


def test_duplicate_ids_and_missing_file(tmp_path):
    data = _one()
    data["data"][0]["paragraphs"].append(data["data"][0]["paragraphs"][0])
    with pytest.raises(SquadDataError, match="question 'q1'.*duplicate question id"):
        read_squad_examples(_write(tmp_path, data))
    with pytest.raises(SquadDataError, match="SQuAD file not found"):
        read_squad_examples(tmp_path / "nope.json")


def test_vocab_case_must_match_lower_casing(tmp_path):
    from bertlib.tokenization import load_tokenizer

    with pytest.raises(SquadDataError, match="vocab is uncased.*--do_lower_case"):
        check_vocab_case(VOCAB, do_lower_case=False)
    assert check_vocab_case(VOCAB, do_lower_case=True) is True
    cased = tmp_path / "cased.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "the", "Paris", "is", "##s"]
    cased.write_text("\n".join(words) + "\n")
    with pytest.raises(SquadDataError, match="vocab is cased.*--do_lower_case false"):
        check_vocab_case(cased, do_lower_case=True)
    assert check_vocab_case(cased, do_lower_case=False) is False
    examples = read_squad_examples(_write(tmp_path, _one()))
    # the same checks guard the conversion, from the tokenizer itself
    with pytest.raises(SquadDataError, match="vocab is uncased"):
        convert_examples_to_features(examples, load_tokenizer(VOCAB, lowercase=False))
    with pytest.raises(SquadDataError, match="do_lower_case=False but the tokenizer does lower-case"):
        convert_examples_to_features(examples, load_tokenizer(VOCAB), do_lower_case=False)


def test_impossible_lengths(tmp_path, tokenizer):
    examples = read_squad_examples(_write(tmp_path, _one()))
    with pytest.raises(SquadDataError, match="leaves no room for the context"):
        convert_examples_to_features(examples, tokenizer, max_seq_length=64, max_query_length=64)
    with pytest.raises(SquadDataError, match="doc_stride must be positive"):
        convert_examples_to_features(examples, tokenizer, doc_stride=0)


# ---- OFRecords ------------------------------------------------------------------------------


def test_ofrecords_match_the_schema(tmp_path, tokenizer, train):
    examples, features = train
    features = features[:300]
    manifest = write_squad_ofrecords(features, tmp_path / "train", is_training=True, data_part_num=3)
    summary = validate_data_dir(tmp_path / "train", squad_train_schema(384), 3, num_ranks=3,
                                vocab_size=tokenizer.get_vocab_size())
    assert summary.num_records == 300 and summary.records_per_part == [100, 100, 100]
    assert manifest["num_features"] == 300 and manifest["schema"]["start_positions"] == ["int32", 1]
    # parts are filled round robin: part-1's first record is feature 1
    record = next(iter_records(tmp_path / "train" / "part-1"))
    f = features[1]
    assert set(record) == set(squad_train_schema(384))
    np.testing.assert_array_equal(record["input_ids"], f.input_ids)
    np.testing.assert_array_equal(record["input_mask"], f.input_mask)
    np.testing.assert_array_equal(record["segment_ids"], f.segment_ids)
    assert record["start_positions"].tolist() == [f.start_position]
    assert record["end_positions"].tolist() == [f.end_position]
    # a training set read with the eval schema fails loudly
    with pytest.raises(Exception, match="unique_ids"):
        validate_data_dir(tmp_path / "train", squad_eval_schema(384), 3)


def test_eval_ofrecords_and_recomputed_metadata(tmp_path, tokenizer):
    from bertlib.squad import make_squad_data

    source = _subset_file(tmp_path, DEV, 1)
    manifest = make_squad_data(source, tokenizer, tmp_path / "dev", is_training=False, data_part_num=2)
    validate_data_dir(tmp_path / "dev", squad_eval_schema(384), 2, vocab_size=30522)
    ids = sorted(int(r["unique_ids"][0]) for p in ("part-0", "part-1") for r in iter_records(tmp_path / "dev" / p))
    assert ids == list(range(FIRST_UNIQUE_ID, FIRST_UNIQUE_ID + manifest["num_features"]))
    assert json.loads((tmp_path / "dev" / MANIFEST_NAME).read_text())["doc_stride"] == 128

    examples, features = load_eval_features(tmp_path / "dev", source, tokenizer)
    assert len(features) == manifest["num_features"] and len(examples) == manifest["num_examples"]

    # another input file, or other settings than the OFRecords were made with: refused
    other = _subset_file(tmp_path, DEV, 2, "other.json")
    with pytest.raises(SquadDataError, match="sha256 differs"):
        load_eval_features(tmp_path / "dev", other, tokenizer)
    edited = json.loads((tmp_path / "dev" / MANIFEST_NAME).read_text())
    edited["doc_stride"] = 64
    (tmp_path / "dev" / MANIFEST_NAME).write_text(json.dumps(edited))
    with pytest.raises(SquadDataError, match="do not match"):
        load_eval_features(tmp_path / "dev", source, tokenizer)
    with pytest.raises(SquadDataError, match="squad_features.json not found"):
        load_eval_features(tmp_path, source, tokenizer)


def test_cli(tmp_path, capsys):
    from bertlib.cli import make_squad_data as cli

    source = _subset_file(tmp_path, TRAIN, 1)
    out = tmp_path / "out"
    argv = ["--input_file", str(source), "--vocab_file", str(VOCAB), "--output_dir", str(out),
            "--is_training", "--max_seq_length", "128", "--doc_stride", "64", "--data_part_num", "2", "--no_progress"]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "training data:" in stdout and "features, 2 parts, seq 128" in stdout
    validate_data_dir(out, squad_train_schema(128), 2, vocab_size=30522)

    # user errors: one line on stderr, exit code 2
    for bad in (["--vocab_file", str(tmp_path / "none.txt")], ["--do_lower_case", "false"],
                ["--input_file", str(tmp_path / "none.json")]):
        assert cli.main(argv + bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("bert-make-squad-data: error:") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as info:  # --is_training or --eval is required
        cli.main(argv[:6])
    assert info.value.code == 2
