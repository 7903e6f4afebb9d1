"""The shipped samples are real, small and attributed; full-size data is found in the documented order."""
import json
from pathlib import Path

import pytest

from bertlib import datasets
from bertlib.datasets import FULL_DATA_HINT, find_data, full_data_dir, sample_dir
from bertlib.tokenization import SPECIAL_TOKENS, read_vocab


def _make_full(folder: Path) -> Path:
    for name in ("squad/dev-v1.1.json", "bert/vocab.txt", "squad/train-v1.1.json", "corpus/wikitext-2/valid.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    return folder


@pytest.fixture()
def no_lookup(tmp_path, monkeypatch):
    """Nothing found anywhere: an empty cache and no checkout data beside the repository."""
    monkeypatch.delenv("BERTLIB_DATA_DIR", raising=False)
    monkeypatch.setenv("BERTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_checkout_shared", lambda: tmp_path / "no-shared")
    return tmp_path


def test_samples_are_small_real_and_attributed():
    root = sample_dir()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 1_000_000  # well under the 2 MB budget
    sources = (root / "SOURCES.md").read_text(encoding="utf-8")
    for p in files:
        if p.name != "SOURCES.md":
            assert p.name in sources, f"{p.name} has no provenance in SOURCES.md"
    for licence in ("CC BY-SA 4.0", "CC BY-SA 3.0", "public domain", "Apache License 2.0"):
        assert licence in sources
    data = find_data("sample")
    assert not data.full and data.root == root
    vocab = read_vocab(data.vocab)
    assert len(vocab) == 30522 and vocab[101:104] == ["[CLS]", "[SEP]", "[MASK]"]
    assert set(SPECIAL_TOKENS) <= set(vocab)
    assert len(data.wikitext) == 1 and len(data.books) == 3


@pytest.mark.parametrize("split", ["squad_train", "squad_dev"])
def test_sample_squad_answers_are_spans_of_their_context(split):
    dataset = json.loads(getattr(find_data("sample"), split).read_text(encoding="utf-8"))
    assert dataset["version"] == "1.1"
    questions = 0
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions += 1
                for answer in qa["answers"]:
                    start = answer["answer_start"]
                    assert paragraph["context"][start:start + len(answer["text"])] == answer["text"]
    assert questions > 200


def test_lookup_order(no_lookup, monkeypatch):
    tmp = no_lookup
    assert full_data_dir() is None and find_data().full is False
    with pytest.raises(FileNotFoundError, match="full-size data not found.*BERTLIB_DATA_DIR"):
        find_data("full")
    checkout = _make_full(tmp / "shared")
    monkeypatch.setattr(datasets, "_checkout_shared", lambda: checkout)
    assert full_data_dir() == checkout                      # 4. beside the checkout
    cached = _make_full(tmp / "cache" / "data")
    assert full_data_dir() == cached                        # 3. the cache comes before it
    env = _make_full(tmp / "env")
    monkeypatch.setenv("BERTLIB_DATA_DIR", str(env))
    assert full_data_dir() == env                           # 2. the environment before that
    explicit = _make_full(tmp / "explicit")
    assert full_data_dir(explicit) == explicit              # 1. an explicit path first of all
    data = find_data(path=explicit)
    assert data.full and data.squad_dev == explicit / "squad/dev-v1.1.json"
    assert data.squad_train == explicit / "squad/train-v1.1.json"
    assert data.corpus == [explicit / "corpus/wikitext-2/valid.txt"]
    monkeypatch.setenv("BERTLIB_DATA_DIR", "none")          # switched off: the samples, whatever exists
    assert full_data_dir() is None and find_data().root == sample_dir()


def test_a_named_folder_that_is_not_data_is_an_error(no_lookup, monkeypatch):
    empty = no_lookup / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"the given data folder .*empty has no squad/dev-v1\.1\.json"):
        find_data(path=empty)
    monkeypatch.setenv("BERTLIB_DATA_DIR", str(no_lookup / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$BERTLIB_DATA_DIR .*missing is not a folder"):
        find_data()
    with pytest.raises(ValueError, match="size must be"):
        find_data("large")
    assert "BERTLIB_DATA_DIR" in FULL_DATA_HINT
