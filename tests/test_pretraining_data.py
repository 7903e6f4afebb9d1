"""Pre-training instances: statistics on a real corpus, record structure, determinism, bad input."""
import numpy as np
import pytest

from bertlib.corpus import CorpusError, Document, read_corpus
from bertlib.ofrecord import DataError, encode_record, iter_records, validate_data_dir
from bertlib.pretraining_data import (_features, _payload, _settings, _truncated_lengths, _window_instances,
                                      _window_rng, _windows, _assemble, _tokenize_documents,
                                      create_pretraining_data, make_instances, pretraining_schema,
                                      render_instance)
from bertlib.tokenization import load_tokenizer, read_vocab

from bertlib.datasets import find_data

DATA = find_data()  # full-size when found, else the samples shipped with bertlib
VOCAB = DATA.vocab
[WIKI] = [f for f in DATA.wikitext if f.name.startswith("valid")]  # 60 articles, or the first 8
BOOKS = {book.name.split("-sample")[0].removesuffix(".txt"): book for book in DATA.books}
CLS, SEP, MASK = 101, 102, 103


@pytest.fixture(scope="module")
def vocab():
    return read_vocab(VOCAB)


@pytest.fixture(scope="module")
def instances():
    """~2,100 instances: WikiText-2 valid (60 Wikipedia articles) once, or its first 8 articles in 12 passes."""
    return make_instances(WIKI, VOCAB, seq_length=128, max_predictions_per_seq=20, seed=7,
                          dupe_factor=1 if DATA.full else 12)


@pytest.fixture(scope="module")
def arrays(instances):
    return {k: np.stack([i[k] for i in instances]) for k in instances[0]}


def test_schema_is_references(arrays):
    schema = pretraining_schema(128, 20)
    assert list(schema) == ["input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                            "masked_lm_weights", "next_sentence_labels"]
    for name, (dtype, length) in schema.items():
        assert arrays[name].dtype == dtype and arrays[name].shape[1] == length, name


def test_masking_statistics(arrays):
    n = len(arrays["input_ids"])
    assert n > 2000
    lengths = arrays["input_mask"].sum(1)
    weights = arrays["masked_lm_weights"]
    k = weights.sum(1).astype(int)
    # round(15% of the length) positions, at most 20.
    np.testing.assert_array_equal(k, np.minimum(20, np.maximum(1, np.round(lengths * 0.15))))
    assert abs(k.sum() / lengths.sum() - 0.15) < 0.005
    rows = np.repeat(np.arange(n), 20).reshape(n, 20)
    sel = weights > 0
    now = arrays["input_ids"][rows[sel], arrays["masked_lm_positions"][sel]]
    orig = arrays["masked_lm_ids"][sel]
    as_mask, kept = np.mean(now == MASK), np.mean(now == orig)
    randomised = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.015 and abs(kept - 0.1) < 0.015 and abs(randomised - 0.1) < 0.015
    # Next sentence: half random, plus the chunks of one sentence, which must take a random B.
    assert 0.48 < arrays["next_sentence_labels"].mean() < 0.56
    # short_seq_prob 0.1: about a tenth of instances aim below the full length.
    assert 0.7 < np.mean(lengths >= 100) < 0.97


def test_structure_of_every_instance(arrays):
    for ids, mask, seg, pos, mids, w in zip(*(arrays[k] for k in (
            "input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights"))):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()
        assert ids[0] == CLS and not ids[length:].any()
        seps = np.flatnonzero(ids[:length] == SEP)
        assert len(seps) == 2 and seps[1] == length - 1 and 1 < seps[0] < length - 2
        expected_seg = np.zeros(128, int)
        expected_seg[seps[0] + 1:length] = 1
        np.testing.assert_array_equal(seg, expected_seg)
        k = int(w.sum())
        assert (w[:k] == 1).all() and not w[k:].any() and not pos[k:].any() and not mids[k:].any()
        assert (np.diff(pos[:k]) > 0).all()
        assert not np.isin(pos[:k], [0, *seps]).any()        # never [CLS] or [SEP]
        assert not np.isin(mids[:k], [CLS, SEP, 0]).any()


def test_whole_word_masking_masks_all_pieces(vocab):
    insts = make_instances(read_corpus(WIKI)[:15], VOCAB, whole_word_mask=True, seed=3, limit=400)
    cont = np.array([t.startswith("##") for t in vocab])
    checked = 0
    for inst in insts:
        k = int(inst["masked_lm_weights"].sum())
        pos = set(inst["masked_lm_positions"][:k].tolist())
        seps = np.flatnonzero(inst["input_ids"] == SEP)
        for p, original in zip(inst["masked_lm_positions"][:k], inst["masked_lm_ids"][:k]):
            if cont[original] and p > 1 and p - 1 not in seps:  # not at the start of A or B
                assert p - 1 in pos  # the piece before it (same word) is masked too
                checked += 1
        for p in pos:  # and a masked piece's unmasked right neighbour never continues its word
            if p + 1 not in pos:
                assert not cont[inst["input_ids"][p + 1]]
    assert checked > 50


def test_truncation_lengths_match_the_one_token_at_a_time_loop():
    for la in range(1, 40):
        for lb in range(1, 40):
            a, b = la, lb
            while a + b > 25:
                if a > b:
                    a -= 1
                else:
                    b -= 1
            assert _truncated_lengths(la, lb, 25) == (a, b)


def test_fast_payload_equals_generic_encoder(vocab):
    docs = [Document("a", ["The first sentence is here.", "And a second one follows it closely."] * 30),
            Document("b", ["Another document starts.", "It also goes on for a while, really."] * 30)]
    corpus = _assemble([_tokenize_documents(docs, load_tokenizer(VOCAB))])
    for wwm in (False, True):
        cfg = _settings(vocab, 64, 10, 0.15, 0.1, wwm)
        for w, (d, s0, s1) in enumerate(_windows(corpus)):
            for inst in _window_instances(corpus, cfg, d, s0, s1, _window_rng(1, 0, w)):
                assert _payload(inst, cfg) == encode_record(_features(inst, cfg))


def test_files_are_identical_for_1_and_2_workers_and_valid(tmp_path):
    kwargs = dict(seq_length=64, max_predictions_per_seq=10, data_part_num=3, dupe_factor=2, progress=False)
    inputs = [BOOKS[name] for name in ("blake-poems", "shakespeare-caesar")]
    one = create_pretraining_data(inputs, VOCAB, tmp_path / "one", num_workers=1, **kwargs)
    two = create_pretraining_data(inputs, VOCAB, tmp_path / "two", num_workers=2, **kwargs)
    other = create_pretraining_data(inputs, VOCAB, tmp_path / "seed", num_workers=1, seed=99, **kwargs)
    for p1, p2, p3 in zip(one.files, two.files, other.files):
        assert p1.read_bytes() == p2.read_bytes()
        assert p1.read_bytes() != p3.read_bytes()
    assert one.instances == two.instances > 500
    summary = validate_data_dir(tmp_path / "one", pretraining_schema(64, 10), 3, vocab_size=30522,
                                id_features=("input_ids", "masked_lm_ids"))
    assert summary.num_records == one.instances
    assert (tmp_path / "one" / "bertlib_data.json").is_file()
    assert one.masked_positions == sum(int(r["masked_lm_weights"].sum()) for r in iter_records(one.files[0])) + \
        sum(int(r["masked_lm_weights"].sum()) for p in one.files[1:] for r in iter_records(p))


def test_render_instance(instances, vocab):
    text = render_instance(instances[0], vocab)
    assert "segment A" in text and "segment B" in text and "masked positions" in text
    assert "[CLS]" in text and "[MASK]<-" in text


@pytest.mark.parametrize("case, error, pattern", [
    ("missing", CorpusError, r"does not exist"),
    ("empty", CorpusError, r"the corpus is empty"),
    ("latin1", CorpusError, r"bad\.txt: not UTF-8 at byte offset 19"),
    ("one_doc", CorpusError, r"only one document"),
    ("single_sentences", CorpusError, r"every document is a single sentence"),
    ("few_instances", DataError, r"only \d+ records for 500 parts"),
    ("bad_setting", ValueError, r"masked_lm_prob must be in \(0, 1\)"),
])
def test_bad_input_gives_a_clear_error(tmp_path, case, error, pattern):
    f = tmp_path / "bad.txt"
    kwargs = dict(progress=False, num_workers=1)
    if case == "empty":
        f.write_text("\n\n")
    elif case == "latin1":
        f.write_bytes("First sentence. Caf\u00e9 here.\n".encode("latin-1"))
    elif case == "one_doc":
        f.write_text("One sentence.\nAnother sentence.\n")
    elif case == "single_sentences":
        f.write_text("One sentence.\n\nAnother document.\n\nA third.\n")
    elif case == "few_instances":
        f.write_text("One sentence.\nTwo sentences.\n\nAnother document.\nWith more.\n")
        kwargs["data_part_num"] = 500
    elif case == "bad_setting":
        f.write_text("x.\ny.\n\nz.\nw.\n")
        kwargs["masked_lm_prob"] = 1.5
    with pytest.raises(error, match=pattern):
        create_pretraining_data([f], VOCAB, tmp_path / "out", input_format="sentences", **kwargs)
    assert not list((tmp_path / "out").glob("part-*")) if (tmp_path / "out").exists() else True


def test_clis_make_validate_and_fail_in_one_line(tmp_path, capsys):
    from bertlib.cli import make_pretraining_data, train_vocab, validate_data

    corpus = BOOKS["blake-poems"]
    out = tmp_path / "data"
    assert make_pretraining_data.main(["--input", str(corpus), "--vocab_file", str(VOCAB), "--output_dir", str(out),
                                       "--no_progress"]) == 2
    assert "only one document" in capsys.readouterr().err  # one book = one document: no random B possible
    corpus = [str(corpus), str(BOOKS["shakespeare-caesar"])]
    assert make_pretraining_data.main(["--input", *corpus, "--vocab_file", str(VOCAB), "--output_dir", str(out),
                                       "--seq_length", "64", "--max_predictions_per_seq", "10",
                                       "--data_part_num", "2", "--dupe_factor", "1", "--no_progress"]) == 0
    assert "instances from" in capsys.readouterr().out
    assert validate_data.main(["--data_dir", str(out), "--vocab_file", str(VOCAB)]) == 0
    assert "OK:" in capsys.readouterr().out
    part = out / "part-1"
    part.write_bytes(part.read_bytes()[:-1])
    assert validate_data.main(["--data_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bert-validate-data: error: ") and "part-1: record" in err
    assert make_pretraining_data.main(["--input", str(tmp_path / "nope"), "--output_dir", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("nope does not exist")
    assert train_vocab.main(["--input", *corpus, "--output_dir", str(tmp_path / "v"), "--vocab_size", "300",
                             "--no_progress"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "v" / "vocab.txt").is_file()
