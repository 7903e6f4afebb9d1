"""Where bertlib's data lives, and the data it can build by itself.

Like other libraries, bertlib keeps generated files in a cache directory, ``$BERTLIB_CACHE``,
``$XDG_CACHE_HOME/bertlib`` or ``~/.cache/bertlib``. It can build three things there, once, with no download:

* **a default corpus** (:func:`default_corpus_dir`): real English prose that every Python
  installation carries, the Python reference documentation in the standard library's
  ``pydoc_data.topics`` (the text ``help("for")`` shows; ~80 topics, ~60,000 words). Each topic is
  one document; code samples, grammar rules and headings are dropped, the prose paragraphs are
  cut into sentences, written one per line with blank lines between documents (the "sentences"
  format of :mod:`bertlib.corpus`). Enough to see BERT's losses fall, far too little to learn
  English: pass your own corpus for real work.
* **a WordPiece vocabulary** trained on it (:func:`default_vocab`, 8,000 tokens requested; the small
  corpus yields somewhat fewer).
* **pre-training OFRecords** made from it (:func:`default_pretraining_data`), which the
  pre-training CLI uses when it is given no ``--data_dir``.

Every build writes to a temporary name and renames at the end, under a file lock, so concurrent
processes (ranks of one launch) build once and never see half-written files. Names carry the
Python version (the corpus differs between versions) and the settings.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["cache_dir", "cache_root", "default_corpus_dir", "default_vocab", "find_vocab", "default_pretraining_data"]

DEFAULT_VOCAB_SIZE = 8000
_PY = f"py{sys.version_info.major}{sys.version_info.minor}"


def cache_root() -> Path:
    """``$BERTLIB_CACHE`` if set, else ``$XDG_CACHE_HOME/bertlib``, else ``~/.cache/bertlib`` (not created)."""
    if os.environ.get("BERTLIB_CACHE"):
        return Path(os.environ["BERTLIB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "bertlib"


def cache_dir() -> Path:
    """:func:`cache_root`, created on first use."""
    path = cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(name: str):
    """An exclusive lock shared by all processes using the same cache."""
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# The default corpus
# --------------------------------------------------------------------------------------------------

_UNDERLINE = re.compile(r"^\s*([*=\-~^\"#+])\1{2,}\s*$")
_ENDS = re.compile(r"""[.!?:]["'\u201d\u2019)]*$""")


def _prose_paragraphs(topic: str) -> list[str]:
    """The prose of one pydoc topic: paragraphs of text, without code, grammar or headings."""
    lines = topic.replace("\r", "").split("\n")
    # Headings are a title line followed by an underline of *, = or -.
    keep = [not _UNDERLINE.match(line) and not (i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]))
            for i, line in enumerate(lines)]
    blocks, current = [], []
    for line, ok in zip(lines, keep):
        if not ok or not line.strip():
            if current:
                blocks.append(current)
            current = []
        else:
            current.append(line.strip())
    if current:
        blocks.append(current)
    paragraphs = []
    for block in blocks:
        text = " ".join(block)
        text = re.sub(r"^[*\-] ", "", text)  # bullet items are prose too
        letters = sum(c.isalpha() for c in text)
        visible = sum(not c.isspace() for c in text)
        if ("::=" in text or ">>>" in text or not _ENDS.search(text) or len(text.split()) < 4
                or letters < 0.6 * max(visible, 1)):
            continue  # code, grammar, a lone label, or a table
        paragraphs.append(text)
    return paragraphs


def _build_default_corpus(path: Path) -> None:
    from pydoc_data.topics import topics

    from .corpus import split_sentences

    docs = []
    for name in sorted(topics):
        sentences = [s for p in _prose_paragraphs(topics[name]) for s in split_sentences(p)]
        if len(sentences) >= 2:
            docs.append("\n".join(sentences))
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def default_corpus_dir() -> Path:
    """A directory holding ``pydoc_topics.txt``, the embedded default corpus (built on first use)."""
    directory = cache_dir() / "corpus" / f"pydoc-topics-{_PY}"
    path = directory / "pydoc_topics.txt"
    if not path.is_file():
        with _locked("corpus"):
            if not path.is_file():
                directory.mkdir(parents=True, exist_ok=True)
                _build_default_corpus(path)
    return directory


# --------------------------------------------------------------------------------------------------
# Vocabularies
# --------------------------------------------------------------------------------------------------

def default_vocab(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """``vocab.txt`` of a WordPiece vocabulary trained on the default corpus (built on first use)."""
    from .tokenization import train_vocab

    directory = cache_dir() / "vocab" / f"pydoc-topics-{_PY}-{vocab_size}"
    path = directory / "vocab.txt"
    if not path.is_file():
        corpus = default_corpus_dir()
        with _locked("vocab"):
            if not path.is_file():
                train_vocab([corpus], vocab_size, directory, input_format="sentences")
    return path


def find_vocab(path: str | os.PathLike | None = None) -> Path:
    """The vocab file to use: ``path`` if given, else ``$BERTLIB_VOCAB``; an error names what is missing."""
    from .tokenization import VocabError

    if path is not None:
        candidate, origin = Path(path).expanduser(), "the given vocab file"
    elif os.environ.get("BERTLIB_VOCAB"):
        candidate, origin = Path(os.environ["BERTLIB_VOCAB"]).expanduser(), "$BERTLIB_VOCAB"
    else:
        raise VocabError(
            "no vocabulary: pass --vocab_file, or set BERTLIB_VOCAB to a vocab.txt. Make one from your "
            "corpus with `bert-train-vocab --input <files> --output_dir <dir>`, or use Google's "
            "bert-base-uncased vocab.txt (30,522 tokens)")
    if not candidate.is_file():
        raise VocabError(f"{origin} {candidate} does not exist: make one with `bert-train-vocab`, or use "
                         "Google's bert-base-uncased vocab.txt")
    return candidate


# --------------------------------------------------------------------------------------------------
# Pre-training data
# --------------------------------------------------------------------------------------------------

def default_pretraining_data(seq_length: int = 128, max_predictions_per_seq: int = 20,
                             data_part_num: int = 4, seed: int = 12345) -> tuple[Path, Path]:
    """OFRecords made from the default corpus with its vocabulary: ``(data_dir, vocab_file)``.

    Built on first use (a few seconds; ``dupe_factor`` 5) and reused afterwards.
    """
    from .pretraining_data import METADATA_FILE, create_pretraining_data

    vocab = default_vocab()
    name = f"pydoc-topics-{_PY}-v{DEFAULT_VOCAB_SIZE}-seq{seq_length}-pred{max_predictions_per_seq}" \
           f"-parts{data_part_num}-seed{seed}"
    data_dir = cache_dir() / "pretraining" / name
    if not (data_dir / METADATA_FILE).is_file():  # written last: its presence means complete
        with _locked("pretraining"):
            if not (data_dir / METADATA_FILE).is_file():
                tmp = data_dir.with_name(data_dir.name + f".{os.getpid()}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                create_pretraining_data(
                    [default_corpus_dir()], vocab, tmp, seq_length=seq_length,
                    max_predictions_per_seq=max_predictions_per_seq, data_part_num=data_part_num,
                    dupe_factor=5, seed=seed, progress=False, input_format="sentences", num_workers=1)
                meta = json.loads((tmp / METADATA_FILE).read_text(encoding="utf-8"))
                meta["output_dir"] = str(data_dir)
                (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
                shutil.rmtree(data_dir, ignore_errors=True)
                os.replace(tmp, data_dir)
    return data_dir, vocab
