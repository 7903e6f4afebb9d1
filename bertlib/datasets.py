"""The real data bertlib's notebooks, tests and examples read: shipped samples, full-size data when found.

Two sizes of the same data, with the same layout::

    squad/       SQuAD v1.1 train and dev JSON
    bert/        vocab.txt, the bert-base-uncased WordPiece vocabulary
    corpus/      wikitext-2/*.txt (Wikipedia prose), gutenberg/*.txt (books)

* **sample** — a few SQuAD articles, a few WikiText-2 articles, three book openings and the vocab,
  shipped inside the package (``bertlib/sample_data``, 0.74 MB; licences and provenance in its
  ``SOURCES.md``). Always there: a bare clone or a ``pip install`` runs everything on it.
* **full** — the official SQuAD v1.1 dev set (10,570 questions), a SQuAD training set, WikiText-2's
  splits and whole books. Never shipped; found, like other packages find their data, in this order:

  1. an explicit path (the ``path`` argument);
  2. ``$BERTLIB_DATA_DIR`` (set it to ``none`` to switch the lookup off: everything then runs on
     the samples, as on a fresh clone);
  3. ``<bertlib cache>/data`` (``$BERTLIB_CACHE/data``, by default ``~/.cache/bertlib/data``);
  4. ``../shared/data`` beside the repository checkout (the project developers' layout).

  A folder counts as full-size data when it holds ``squad/dev-v1.1.json`` and ``bert/vocab.txt``.

:func:`find_data` returns a :class:`DataFiles` with the paths to use; ``size="auto"`` takes full-size
data when found, else the samples.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

__all__ = ["DataFiles", "FULL_DATA_HINT", "find_data", "full_data_dir", "sample_dir"]

_REQUIRED = ("squad/dev-v1.1.json", "bert/vocab.txt")
# The official training set first, then the 44-article subset some copies carry instead.
_TRAIN_NAMES = ("squad/train-v1.1.json", "squad/train-v1.1-first44articles.json")
_SWITCHED_OFF = {"none", "off", "0", "false", "no"}

FULL_DATA_HINT = (
    "full-size data not found: put it in a folder with squad/dev-v1.1.json, squad/train-v1.1.json, "
    "bert/vocab.txt and corpus/ (wikitext-2/, gutenberg/), then set BERTLIB_DATA_DIR=<folder> "
    "(or place it in ~/.cache/bertlib/data)")


@dataclass(frozen=True)
class DataFiles:
    """Paths of one size of the data. ``full`` says which size it is."""

    root: Path                      # the folder the paths below live in
    full: bool                      # True: full-size data found; False: the shipped samples
    vocab: Path                     # bert-base-uncased vocab.txt (30,522 WordPieces, uncased)
    squad_train: Optional[Path]     # SQuAD v1.1 training JSON (None if the full folder has none)
    squad_dev: Path                 # SQuAD v1.1 dev JSON
    wikitext: List[Path] = field(default_factory=list)   # WikiText-2 text files (one article per " = Title = ")
    books: List[Path] = field(default_factory=list)      # Project Gutenberg books, running prose

    @property
    def corpus(self) -> List[Path]:
        """Every text file of the corpus: WikiText-2, then the books."""
        return [*self.wikitext, *self.books]


def sample_dir() -> Path:
    """The folder of the samples shipped with bertlib."""
    return Path(__file__).resolve().parent / "sample_data"


def _is_full(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED)


def _checkout_shared() -> Path:
    # bertlib/datasets.py -> repository root -> its parent; only meaningful for a source checkout.
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def full_data_dir(path: str | os.PathLike | None = None) -> Optional[Path]:
    """The full-size data folder, or None when there is none (see the module docstring for the order).

    An explicit ``path`` or ``$BERTLIB_DATA_DIR`` that lacks the required files is an error, not a
    silent fallback: the caller asked for that folder.
    """
    if path is not None:
        return _checked(Path(path).expanduser(), "the given data folder")
    env = os.environ.get("BERTLIB_DATA_DIR", "").strip()
    if env.lower() in _SWITCHED_OFF:
        return None
    if env:
        return _checked(Path(env).expanduser(), "$BERTLIB_DATA_DIR")
    from .resources import cache_root

    for candidate in (cache_root() / "data", _checkout_shared()):
        if _is_full(candidate):
            return candidate
    return None


def _checked(folder: Path, origin: str) -> Path:
    if not folder.is_dir():
        raise FileNotFoundError(f"{origin} {folder} is not a folder")
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{origin} {folder} has no {' or '.join(missing)}; {FULL_DATA_HINT}")
    return folder


def find_data(size: str = "auto", path: str | os.PathLike | None = None) -> DataFiles:
    """The data to use: ``size`` is ``"auto"`` (full-size when found, else samples), ``"full"`` or ``"sample"``.

    ``size="full"`` raises :class:`FileNotFoundError` with :data:`FULL_DATA_HINT` when there is none.
    """
    if size not in ("auto", "full", "sample"):
        raise ValueError(f"size must be 'auto', 'full' or 'sample', not {size!r}")
    folder = None if size == "sample" else full_data_dir(path)
    if folder is None:
        if size == "full":
            raise FileNotFoundError(FULL_DATA_HINT)
        return _samples()
    train = next((folder / name for name in _TRAIN_NAMES if (folder / name).is_file()), None)
    return DataFiles(root=folder, full=True, vocab=folder / "bert/vocab.txt", squad_train=train,
                     squad_dev=folder / "squad/dev-v1.1.json",
                     wikitext=sorted((folder / "corpus/wikitext-2").glob("*.txt")),
                     books=sorted((folder / "corpus/gutenberg").glob("*.txt")))


def _samples() -> DataFiles:
    root = sample_dir()
    return DataFiles(root=root, full=False, vocab=root / "bert/vocab.txt",
                     squad_train=root / "squad/train-v1.1-sample.json",
                     squad_dev=root / "squad/dev-v1.1-sample.json",
                     wikitext=sorted((root / "corpus/wikitext-2").glob("*.txt")),
                     books=sorted((root / "corpus/gutenberg").glob("*.txt")))
