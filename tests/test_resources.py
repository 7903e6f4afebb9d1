"""The cache and what bertlib builds with no download: default corpus, vocab, pre-training data."""
import pytest

from bertlib.corpus import read_corpus
from bertlib.ofrecord import validate_data_dir
from bertlib.pretraining_data import pretraining_schema
from bertlib.resources import cache_dir, default_corpus_dir, default_pretraining_data, find_vocab
from bertlib.tokenization import SPECIAL_TOKENS, VocabError, read_vocab


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BERTLIB_VOCAB", raising=False)
    return tmp_path / "cache"


def test_default_corpus_is_python_documentation_prose(cache):
    assert cache_dir() == cache
    directory = default_corpus_dir()
    docs = read_corpus(directory)
    text = (directory / "pydoc_topics.txt").read_text(encoding="utf-8")
    assert 60 <= len(docs) <= 100 and len(text.split()) > 30_000
    assert "The current code generator emits no code for an assert statement" in text
    assert "::=" not in text and ">>>" not in text  # grammar and code samples are dropped
    built = (directory / "pydoc_topics.txt").stat().st_mtime_ns
    assert (default_corpus_dir() / "pydoc_topics.txt").stat().st_mtime_ns == built  # built once, then reused


def test_default_data_and_vocab(cache):
    data_dir, vocab_file = default_pretraining_data(seq_length=64, max_predictions_per_seq=10, data_part_num=2)
    vocab = read_vocab(vocab_file)
    assert tuple(vocab[:5]) == SPECIAL_TOKENS and 2000 < len(vocab) <= 8000
    summary = validate_data_dir(data_dir, pretraining_schema(64, 10), 2, vocab_size=len(vocab),
                                id_features=("input_ids", "masked_lm_ids"))
    assert summary.num_records > 1000
    again = default_pretraining_data(seq_length=64, max_predictions_per_seq=10, data_part_num=2)
    assert again == (data_dir, vocab_file)
    assert not list(data_dir.parent.glob("*.tmp"))


def test_find_vocab(cache, tmp_path, monkeypatch):
    with pytest.raises(VocabError, match=r"no vocabulary: pass --vocab_file, or set BERTLIB_VOCAB.*bert-train-vocab"):
        find_vocab()
    with pytest.raises(VocabError, match=r"the given vocab file .*missing\.txt does not exist"):
        find_vocab(tmp_path / "missing.txt")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS) + "\n")
    monkeypatch.setenv("BERTLIB_VOCAB", str(vocab))
    assert find_vocab() == vocab
    assert find_vocab(str(vocab)) == vocab
