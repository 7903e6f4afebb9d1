"""Text corpora -> documents of sentences: the first step of making pre-training data.

BERT's next-sentence task needs to know where sentences and documents end. Two input formats:

``sentences`` (the format of Google's ``create_pretraining_data``)
    One sentence per line; a blank line ends a document. Lines are taken as they are.

``paragraphs`` (raw prose such as Project Gutenberg books or WikiText)
    A file is one document. Blank lines separate paragraphs; the lines of a paragraph are joined
    (books are hard-wrapped at ~70 columns) and cut into sentences by :func:`split_sentences`.
    WikiText markup is undone: a top-level heading line ``= Title =`` starts a new document,
    deeper headings (``= = Section = =``) are dropped, `` @-@ `` / `` @,@ `` / `` @.@ `` become
    ``-`` ``,`` ``.``, and ``<unk>`` becomes ``[UNK]`` (the tokenizer keeps it as one token).

``auto`` (the default) looks at up to the first 2,000 non-blank lines of each file: WikiText
headings, or more than 20% of lines holding several sentences, or fewer than half of them ending
like a sentence, mean ``paragraphs``; anything else is ``sentences``.

The sentence splitter is deliberately simple (a regular expression plus an abbreviation list, no
model): a sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes or brackets) followed by
white space and an upper-case letter, digit or opening quote, unless the word before the full
stop is a common abbreviation (Mr., Dr., e.g., ...) or a single capital (an initial). Its errors
only move NSP boundaries a little; BERT is trained on sentence *pairs* packed to 128+ tokens, so
nothing depends on sentence boundaries being exact.

Files must be UTF-8; a file that is not names the byte offset of the first bad byte.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["CorpusError", "Document", "find_text_files", "read_text", "split_sentences",
           "detect_format", "parse_documents", "read_corpus"]

FORMATS = ("auto", "sentences", "paragraphs")


class CorpusError(ValueError):
    """Input text that cannot be turned into training data (missing, empty, not UTF-8, ...)."""


@dataclass
class Document:
    """One document: where it came from and its sentences (str, in order)."""
    source: str
    sentences: list[str]


def find_text_files(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand inputs into files: a file is taken as is, a directory gives its ``*.txt`` files
    (recursively, sorted, hidden ones skipped)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise CorpusError(f"input directory {path} contains no *.txt files")
            files.extend(found)
        else:
            raise CorpusError(f"input {path} does not exist")
    if not files:
        raise CorpusError("no input files given")
    return files


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file (a BOM is dropped, line ends normalised to ``\\n``)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 4].hex(" ")
        line = data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(
            f"{path}: not UTF-8 at byte offset {exc.start} (line {line}, bytes {bad}); convert it, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf fig figs no nos vol vols ch chap sec pp p ed eds
gen col lt capt cpt sgt maj rev hon gov pres sen rep messrs mme mlle approx dept est inc ltd co
corp jan feb mar apr jun jul aug sep sept oct nov dec
""".split())

# A candidate boundary: terminal punctuation, closing quotes/brackets, white space, then what can
# start a sentence.
_BOUNDARY = re.compile(r"""([.!?]+["'\u201d\u2019)\]]*)\s+(?=["'\u201c\u2018(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences (see the module docstring for the rule)."""
    text = " ".join(text.split())
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        punct = m.group(1)
        if punct.startswith(".") and len(punct.rstrip("\"'\u201d\u2019)]")) == 1:
            end = m.start()
            word = text[max(start, text.rfind(" ", start, end) + 1):end].lstrip("\"'(\u201c\u2018[").lower()
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        sentence = text[start:m.end(1)].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


# --------------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------------

# WikiText headings: " = Title = ", " = = Section = = " (the level is the number of "=").
_HEADING = re.compile(r"^\s*((?:=\s+)+)\S.*?((?:\s+=)+)\s*$")
_WIKITEXT = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), ("<unk>", "[UNK]"))
_ENDS_SENTENCE = re.compile(r"""[.!?]["'\u201d\u2019)\]]*$""")


def detect_format(text: str, sample_lines: int = 2000) -> str:
    """Guess ``sentences`` or ``paragraphs`` for one file's text (rule in the module docstring)."""
    lines = []
    for line in text.split("\n"):
        if line.strip():
            lines.append(line)
            if len(lines) >= sample_lines:
                break
    if not lines:
        return "sentences"
    if any(_HEADING.match(line) for line in lines):
        return "paragraphs"
    multi = sum(len(split_sentences(line)) > 1 for line in lines)
    ends = sum(bool(_ENDS_SENTENCE.search(line.rstrip())) for line in lines)
    if multi > 0.2 * len(lines) or ends < 0.5 * len(lines):
        return "paragraphs"
    return "sentences"


def parse_documents(text: str, input_format: str = "auto", source: str = "<text>") -> list[Document]:
    """Cut one file's text into documents (empty documents are dropped)."""
    if input_format not in FORMATS:
        raise CorpusError(f"input_format must be one of {', '.join(FORMATS)} (got {input_format!r})")
    if input_format == "auto":
        input_format = detect_format(text)
    docs: list[Document] = []
    if input_format == "sentences":
        current: list[str] = []
        for line in text.split("\n"):
            line = line.strip()
            if line:
                current.append(line)
            elif current:
                docs.append(Document(source, current))
                current = []
        if current:
            docs.append(Document(source, current))
        return docs

    sentences: list[str] = []
    paragraph: list[str] = []

    def flush_paragraph():
        if paragraph:
            joined = " ".join(paragraph)
            for old, new in _WIKITEXT:
                joined = joined.replace(old, new)
            sentences.extend(split_sentences(joined))
            paragraph.clear()

    for line in text.split("\n"):
        heading = _HEADING.match(line)
        if heading:
            flush_paragraph()
            if heading.group(1).count("=") == 1 and sentences:  # a new WikiText article
                docs.append(Document(source, sentences))
                sentences = []
        elif line.strip():
            paragraph.append(line.strip())
        else:
            flush_paragraph()
    flush_paragraph()
    if sentences:
        docs.append(Document(source, sentences))
    return docs


def read_corpus(inputs: str | os.PathLike | Sequence[str | os.PathLike],
                input_format: str = "auto") -> list[Document]:
    """Read files/directories into documents; raise :class:`CorpusError` if there is no text."""
    files = find_text_files(inputs)
    docs: list[Document] = []
    for path in files:
        docs.extend(parse_documents(read_text(path), input_format, str(path)))
    if not docs:
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise CorpusError(f"no text found in {names}: the corpus is empty")
    return docs
