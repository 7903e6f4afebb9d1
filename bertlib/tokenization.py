"""WordPiece tokenisation, through Hugging Face ``tokenizers`` (Rust, multi-threaded).

BERT's tokenizer, uncased flavour: clean the text, put spaces around CJK characters, lower-case and
strip accents (``BertNormalizer``), split on white space and punctuation (``BertPreTokenizer``),
then cut each word greedily into the longest pieces found in ``vocab.txt`` (``WordPiece``); a piece
that continues a word starts with ``##`` ("tokenization" -> ``token ##ization``). A word with no
such cut becomes ``[UNK]``.

``vocab.txt`` holds one token per line; the line number is the token id. The special tokens
``[PAD] [UNK] [CLS] [SEP] [MASK]`` must be in it (Google's bert-base-uncased has them at
0, 100, 101, 102, 103; :func:`train_vocab` puts them at 0..4).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["SPECIAL_TOKENS", "VocabError", "read_vocab", "load_tokenizer", "train_vocab",
           "special_token_ids", "encode_ids"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_WHERE_TO_GET = ("make one from your corpus with `bert-train-vocab --input <text files> --output_dir <dir>` "
                 "or use Google's bert-base-uncased vocab.txt (30,522 tokens, e.g. from the "
                 "bert-base-uncased model on the Hugging Face hub)")


class VocabError(FileNotFoundError):
    """A vocab.txt that is missing or unusable."""


def read_vocab(vocab_file: str | os.PathLike) -> list[str]:
    """The tokens of ``vocab.txt`` in id order; checks the file exists and has the special tokens."""
    path = Path(vocab_file).expanduser()
    if not path.is_file():
        raise VocabError(f"vocab file {path} not found: {_WHERE_TO_GET}")
    tokens = path.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()  # the final newline
    tokens = [t.rstrip("\r") for t in tokens]
    missing = [t for t in SPECIAL_TOKENS if t not in set(tokens)]
    if missing:
        raise VocabError(f"vocab file {path} lacks the special tokens {' '.join(missing)} "
                         f"({len(tokens)} lines; is it a BERT WordPiece vocab?)")
    return tokens


def special_token_ids(vocab: Sequence[str]) -> dict[str, int]:
    """``{"[PAD]": id, "[UNK]": id, ...}`` for a vocabulary read with :func:`read_vocab`."""
    index = {t: i for i, t in enumerate(vocab)}
    return {t: index[t] for t in SPECIAL_TOKENS}


def load_tokenizer(vocab_file: str | os.PathLike, lowercase: bool = True):
    """A ``tokenizers.BertWordPieceTokenizer`` for ``vocab_file``.

    ``encode(text)`` adds ``[CLS] ... [SEP]``; pass ``add_special_tokens=False`` for bare pieces.
    ``lowercase=False`` is for cased vocabularies (accents are then kept too).
    """
    from tokenizers import BertWordPieceTokenizer

    read_vocab(vocab_file)  # clear errors before the Rust side sees the file
    return BertWordPieceTokenizer(str(Path(vocab_file).expanduser()), lowercase=lowercase,
                                  strip_accents=lowercase, clean_text=True,
                                  handle_chinese_chars=True, wordpieces_prefix="##")


# What BertNormalizer(clean_text=True) does to ASCII: control characters vanish, \t \n \r become
# spaces (accent stripping and CJK spacing cannot apply to ASCII).
_ASCII_CLEAN = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]}
_ASCII_CLEAN.update({0x09: " ", 0x0A: " ", 0x0D: " "})


def _ascii_fast_path(tokenizer):
    """``(tokenizer without normalizer, lowercase)`` when ``tokenizer`` normalises like BERT, else None.

    Profiling showed the Rust normaliser (it tracks character alignments) taking ~40% of WordPiece
    time; for ASCII text ``str.translate`` + ``str.lower`` give identical output much faster.
    """
    from tokenizers import Tokenizer
    from tokenizers.normalizers import BertNormalizer

    cached = getattr(tokenizer, "_bertlib_fast", False)
    if cached is not False:
        return cached
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    norm = inner.normalizer
    fast = None
    if isinstance(norm, BertNormalizer) and norm.clean_text:
        bare = Tokenizer.from_str(inner.to_str())
        bare.normalizer = None
        # Added tokens ([UNK], [MASK], ...) are matched in the raw text before normalisation, so
        # lower-casing must leave them alone.
        added = set(SPECIAL_TOKENS)
        if hasattr(inner, "get_added_tokens_decoder"):
            added |= {t.content for t in inner.get_added_tokens_decoder().values()}
        pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
        fast = (bare, bool(norm.lowercase), pattern)
    try:
        tokenizer._bertlib_fast = fast
    except AttributeError:  # a Rust object that takes no attributes: just don't cache
        pass
    return fast


def encode_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """WordPiece ids of many texts, without ``[CLS]``/``[SEP]`` (what data making needs).

    Same ids as ``tokenizer.encode_batch(texts, add_special_tokens=False)``, faster: ASCII texts are
    normalised in Python (see :func:`_ascii_fast_path`), and character offsets are not computed.
    """
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    fast = _ascii_fast_path(tokenizer)

    def run(tok, batch):
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets (newer tokenizers)
        return [e.ids for e in encode(batch, add_special_tokens=False)]

    if fast is None:
        return run(inner, list(texts))
    bare, lowercase, added = fast

    def lower(text: str) -> str:
        if not any(t in text for t in ("[", "<")):  # no added token can occur: the common case
            return text.lower()
        parts = added.split(text)
        parts[::2] = [p.lower() for p in parts[::2]]
        return "".join(parts)

    ascii_idx = [i for i, t in enumerate(texts) if t.isascii()]
    if len(ascii_idx) == len(texts):
        other_idx = []
    else:
        is_ascii = set(ascii_idx)
        other_idx = [i for i in range(len(texts)) if i not in is_ascii]
    clean = [texts[i].translate(_ASCII_CLEAN) for i in ascii_idx]
    out: list[list[int]] = [None] * len(texts)  # type: ignore[list-item]
    for i, ids in zip(ascii_idx, run(bare, [lower(c) for c in clean] if lowercase else clean)):
        out[i] = ids
    if other_idx:
        for i, ids in zip(other_idx, run(inner, [texts[i] for i in other_idx])):
            out[i] = ids
    return out


def train_vocab(files: Iterable[str | os.PathLike] | str | os.PathLike, vocab_size: int,
                output_dir: str | os.PathLike, lowercase: bool = True, min_frequency: int = 2,
                input_format: str = "auto", progress: bool = False) -> Path:
    """Learn a WordPiece vocabulary from text files/directories and write ``output_dir/vocab.txt``.

    The text is read exactly as :mod:`bertlib.pretraining_data` will read it (same sentence and
    markup handling, see :mod:`bertlib.corpus`). The special tokens take ids 0..4 in the order
    ``[PAD] [UNK] [CLS] [SEP] [MASK]``. A small corpus may yield fewer than ``vocab_size`` tokens
    (every piece must appear ``min_frequency`` times). Returns the path of vocab.txt.
    """
    from tokenizers import BertWordPieceTokenizer

    from .corpus import read_corpus

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (got {vocab_size})")
    docs = read_corpus(files, input_format)
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase,
                                       clean_text=True, handle_chinese_chars=True)
    tokenizer.train_from_iterator(
        (s for d in docs for s in d.sentences), vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS), show_progress=progress, wordpieces_prefix="##",
        length=sum(len(d.sentences) for d in docs))
    out = Path(output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    # Write under a temporary name, then rename: concurrent ranks never see half a vocab.
    tmp = out / f".vocab.txt.{os.getpid()}"
    vocab = tokenizer.get_vocab()
    tmp.write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])),
                   encoding="utf-8")
    os.replace(tmp, out / "vocab.txt")
    return out / "vocab.txt"
