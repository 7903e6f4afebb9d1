"""SQuAD v1.1 JSON -> one :class:`SquadExample` per question.

The context is cut into whitespace-separated *words* exactly as BERT's authors did
(``run_squad.py``): the characters ``" \\t\\r\\n"`` and U+202F separate words, nothing else
does, and every character of the context remembers the word it belongs to
(``char_to_word_offset``). Punctuation stays inside its word here; the WordPiece tokenizer splits
it off later, word by word, so that every sub-token knows its original word. That word index is
what lets post-processing map a predicted token span back to the original text.

The answer of a question is located by its character offset ``answer_start``. We check that the
context really holds the answer text at that offset; a file that fails the check is broken (or
edited by hand) and we refuse it with the file, question id and both strings in the message,
rather than train on wrong labels.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SquadDataError", "SquadExample", "read_squad_examples", "is_whitespace", "split_words"]

logger = logging.getLogger(__name__)


class SquadDataError(ValueError):
    """A SQuAD file (or a setting used with it) that cannot be turned into features."""


@dataclass
class SquadExample:
    """One question about one paragraph.

    ``doc_tokens``, ``char_to_word_offset`` and ``context_text`` are shared (the same list
    objects) by all the questions of a paragraph.
    """

    qas_id: str
    question_text: str
    context_text: str = field(repr=False)
    doc_tokens: list[str] = field(repr=False)
    #: int per character of ``context_text``: index of the word it belongs to (whitespace
    #: belongs to the word before it, -1 before the first word).
    char_to_word_offset: list[int] = field(repr=False)
    #: every reference answer as ``{"text": str, "answer_start": int}``.
    answers: list[dict] = field(default_factory=list, repr=False)
    title: str = ""
    #: first reference answer and its first/last word index in ``doc_tokens`` (inclusive);
    #: None when the question has no answer.
    orig_answer_text: str | None = None
    start_position: int | None = None
    end_position: int | None = None


def is_whitespace(ch: str) -> bool:
    # U+202F (narrow no-break space) appears in SQuAD contexts; BERT's authors treat it as a
    # separator. Other Unicode spaces (e.g. U+00A0) stay inside words, as they did.
    return ch in " \t\r\n" or ch == "\u202f"


def split_words(text: str) -> tuple[list[str], list[int]]:
    """Split ``text`` into words on whitespace; return (words, char_to_word_offset)."""
    words: list[str] = []
    char_to_word_offset: list[int] = []
    previous_was_space = True
    for ch in text:
        if is_whitespace(ch):
            previous_was_space = True
        else:
            if previous_was_space:
                words.append(ch)
            else:
                words[-1] += ch
            previous_was_space = False
        char_to_word_offset.append(len(words) - 1)
    return words, char_to_word_offset


def _load(input_file) -> tuple[Any, str]:
    if isinstance(input_file, (str, Path)):
        source = str(input_file)
        try:
            with open(input_file, encoding="utf-8") as f:
                return json.load(f), source
        except FileNotFoundError:
            raise SquadDataError(f"SQuAD file not found: {source}") from None
        except IsADirectoryError:
            raise SquadDataError(f"expected a SQuAD JSON file, got a directory: {source}") from None
        except UnicodeDecodeError as err:
            raise SquadDataError(f"{source}: not UTF-8 text ({err})") from None
        except json.JSONDecodeError as err:
            raise SquadDataError(
                f"{source}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
            ) from None
    return input_file, "<SQuAD object>"


def _get(obj, key: str, kind: type, where: str):
    if not isinstance(obj, dict):
        raise SquadDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise SquadDataError(f"{where}: missing key {key!r}")
    value = obj[key]
    # bool is an int subclass; an answer_start of true is not an offset.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SquadDataError(
            f"{where}: {key!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def read_squad_examples(
    input_file, is_training: bool = False, skipped: list | None = None
) -> list[SquadExample]:
    """Read a SQuAD v1.1 file (path, or the parsed JSON object) into examples.

    Args:
        input_file: path to the JSON file, or its already parsed object.
        is_training: training needs an answer per question (the first reference answer is the
            label). As BERT's authors did, a training question whose answer cannot be found in
            the whitespace-joined words around it (it contains a separator such as U+00A0 that
            does not split words) is skipped with a warning, not an error.
        skipped: if given, the ids of skipped questions are appended to it.

    Raises:
        SquadDataError: unreadable or malformed JSON, a missing key, a duplicate question id,
            a SQuAD v2 unanswerable question, or an answer whose text is not in the context at
            ``answer_start``. The message names the file and the question.
    """
    dataset, source = _load(input_file)
    if isinstance(dataset, dict):
        articles = _get(dataset, "data", list, source)
    else:
        raise SquadDataError(f"{source}: expected a JSON object with a 'data' list")

    examples: list[SquadExample] = []
    seen_ids: set[str] = set()
    for a_index, article in enumerate(articles):
        title = article.get("title", "") if isinstance(article, dict) else ""
        title = title if isinstance(title, str) else ""
        a_label = f"article {a_index}" + (f" ({title!r})" if title else "")
        a_where = f"{source}: {a_label}"
        paragraphs = _get(article, "paragraphs", list, a_where)
        for p_index, paragraph in enumerate(paragraphs):
            p_where = f"{a_where}, paragraph {p_index}"
            context = _get(paragraph, "context", str, p_where)
            qas = _get(paragraph, "qas", list, p_where)
            doc_tokens, char_to_word_offset = split_words(context)
            for q_index, qa in enumerate(qas):
                q_where = f"{p_where}, question {q_index}"
                qas_id = _get(qa, "id", str, q_where)
                q_where = f"{source}: question {qas_id!r} ({a_label}, paragraph {p_index})"
                if qas_id in seen_ids:
                    raise SquadDataError(f"{q_where}: duplicate question id")
                seen_ids.add(qas_id)
                question = _get(qa, "question", str, q_where)
                if qa.get("is_impossible"):
                    raise SquadDataError(
                        f"{q_where}: an unanswerable (SQuAD v2.0 'is_impossible') question; "
                        "only SQuAD v1.1 is supported"
                    )
                answers = _get(qa, "answers", list, q_where)
                checked = []
                for n, answer in enumerate(answers):
                    ans_where = f"{q_where}, answer {n}"
                    text = _get(answer, "text", str, ans_where)
                    start = _get(answer, "answer_start", int, ans_where)
                    if not text:
                        raise SquadDataError(f"{ans_where}: empty answer text")
                    found = context[start : start + len(text)] if start >= 0 else ""
                    if found != text:
                        raise SquadDataError(
                            f"{ans_where}: answer text {text!r} does not match the context at "
                            f"answer_start={start} (the context there reads {found!r})"
                        )
                    checked.append({"text": text, "answer_start": start})
                if is_training and not checked:
                    raise SquadDataError(f"{q_where}: no answers, but training needs one")

                example = SquadExample(
                    qas_id=qas_id,
                    question_text=question,
                    context_text=context,
                    doc_tokens=doc_tokens,
                    char_to_word_offset=char_to_word_offset,
                    answers=checked,
                    title=title,
                )
                if checked:
                    first = checked[0]
                    start = first["answer_start"]
                    example.orig_answer_text = first["text"]
                    example.start_position = char_to_word_offset[start]
                    example.end_position = char_to_word_offset[start + len(first["text"]) - 1]
                    if is_training:
                        words = " ".join(
                            doc_tokens[example.start_position : example.end_position + 1]
                        )
                        cleaned = " ".join(first["text"].split())
                        if cleaned not in words:
                            logger.warning(
                                "%s: skipped, answer %r not found in the words %r",
                                q_where, cleaned, words,
                            )
                            if skipped is not None:
                                skipped.append(qas_id)
                            continue
                examples.append(example)
    if not seen_ids:
        raise SquadDataError(f"{source}: no questions found")
    return examples
