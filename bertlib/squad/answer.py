"""Ask a fine-tuned BERT a question about a text: the top answers with scores and character offsets.

::

    from bertlib.squad import answer, QuestionAnswerer

    answer("runs/squad/model", "Who won?", "The Broncos beat the Panthers 24-10.", top_k=3)
    # [Answer(text='The Broncos', score=11.2, probability=0.87, start=0, end=11), ...]

    qa = QuestionAnswerer("runs/squad/model")     # loads once; call it as often as you like
    qa("Who lost?", context)                       # -> list[Answer], best first
    qa([(q1, c1), (q2, c2)], top_k=2)              # -> one list[Answer] per pair, in one batch

The path is the one ``bert-squad`` takes for SQuAD's dev set, so the answers agree with it:
the question and context become a one-question SQuAD dataset (:func:`read_squad_examples`),
the context is cut into doc-stride windows (:func:`convert_examples_to_features`), the model
scores every window (batched, no gradients, eval mode), and :func:`postprocess_predictions`
picks the n best spans over all windows (max answer length, max-context rule).

Post-processing gives texts, not places. Each n-best text is located again through the model's
logits (the span whose start and end logits are the entry's, and whose text is the entry's),
then carried from the tokens to the context's words (``token -> word``) and from the words to
characters (the example's ``char_to_word_offset``), so that always
``context[answer.start:answer.end] == answer.text``. An answer spanning several words is the
context's own characters between its first and last character: where the context separates
words by a newline or several spaces, so does the answer (post-processing joins words with one
space).

Note: this module's name is also the name of the function that ``bertlib.squad`` re-exports, so
``bertlib.squad.answer`` is the function; import the classes with
``from bertlib.squad.answer import Answer, QuestionAnswerer`` or from ``bertlib.squad``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .examples import SquadDataError, read_squad_examples
from .features import check_vocab_case, convert_examples_to_features
from .logits import qa_logits
from .postprocess import RawResult, final_text_span, postprocess_predictions

__all__ = ["Answer", "QAError", "QuestionAnswerer", "answer", "clear_model_cache",
           "resolve_model_dir"]

VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"


class QAError(ValueError):
    """A model directory, vocab, setting or input that question answering cannot use."""


@dataclass(frozen=True)
class Answer:
    """One answer: ``context[start:end] == text``.

    ``score`` is the model's start logit + end logit of the span; ``probability`` is its share
    of the softmax over the n-best spans of the question (so the top-k sum to at most 1).
    """

    text: str
    score: float
    probability: float
    start: int  # character offset of the first character in the context
    end: int    # character offset one past the last character

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ the model directory
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _recorded_lower_case(model_dir: Path) -> tuple[bool | None, str | None]:
    """(do_lower_case, file it came from) as tokenizer_config.json, else config.json, records."""
    for name in (TOKENIZER_CONFIG_NAME, "config.json"):
        value = _read_json(model_dir / name).get("do_lower_case")
        if isinstance(value, bool):
            return value, name
    return None, None


def resolve_model_dir(model_dir, vocab_file=None, do_lower_case: bool | None = None):
    """Check a fine-tuned model directory and find its vocab and lower-casing; no OneFlow needed.

    Args:
        model_dir: Hugging Face-format directory: config.json + model.safetensors with a
            ``qa_outputs`` head (``bert-squad`` writes one to ``output_dir/model``).
        vocab_file: the vocab, when the directory has no vocab.txt of its own.
        do_lower_case: None takes it from the directory's tokenizer_config.json (or config.json),
            else from the vocab (an uncased vocab has no capitalised tokens).

    Returns:
        ``(model_dir, vocab_file, do_lower_case)`` as Path, Path, bool.

    Raises:
        QAError: a missing directory or file, no vocab, a vocab the model cannot embed, a model
            without a question-answering head, or a lower-casing that contradicts the directory.
    """
    from ..tokenization import VocabError, read_vocab
    from ..weights import CONFIG_NAME, WEIGHTS_NAME, resolve_checkpoint_dir

    model_dir = Path(model_dir).expanduser()
    try:
        resolve_checkpoint_dir(model_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise QAError(f"model_dir: {exc}") from None
    own_vocab = model_dir / VOCAB_NAME
    try:
        if own_vocab.is_file():
            tokens = read_vocab(own_vocab)
            # The directory's vocab is the one the model was trained with; a different one given
            # as well is a mistake that would silently garble every answer.
            if vocab_file is not None and read_vocab(vocab_file) != tokens:
                raise QAError(f"vocab_file {vocab_file} differs from {own_vocab}, the vocab saved "
                              "with the model; leave vocab_file out")
            vocab_file = own_vocab
        elif vocab_file is None:
            raise QAError(f"no vocab: {model_dir} has no {VOCAB_NAME} and no vocab_file was given "
                          "(--vocab_file: the vocab.txt the model was fine-tuned with)")
        else:
            vocab_file = Path(vocab_file).expanduser()
            tokens = read_vocab(vocab_file)
    except VocabError as exc:
        raise QAError(str(exc)) from None

    config = _read_json(model_dir / CONFIG_NAME)
    if len(tokens) > config.get("vocab_size", len(tokens)):
        raise QAError(f"the vocab {vocab_file} has {len(tokens)} tokens but the model in {model_dir} "
                      f"embeds only {config['vocab_size']}: another model's vocab?")
    names = _weight_names(model_dir / WEIGHTS_NAME)
    if not any(n.endswith("qa_outputs.weight") for n in names):
        raise QAError(f"{model_dir / WEIGHTS_NAME} has no question-answering head (qa_outputs): "
                      "fine-tune it first (bert-squad --do_train --init_checkpoint ...)")

    recorded, source = _recorded_lower_case(model_dir)
    if do_lower_case is None:
        do_lower_case = recorded if recorded is not None else _vocab_is_uncased(tokens)
    elif recorded is not None and recorded != do_lower_case:
        raise QAError(f"do_lower_case={do_lower_case} but {model_dir / source} records "
                      f"do_lower_case={recorded}")
    try:
        check_vocab_case(tokens, do_lower_case)
    except SquadDataError as exc:
        raise QAError(f"{vocab_file}: {exc}") from None
    return model_dir, Path(vocab_file), bool(do_lower_case)


def _vocab_is_uncased(tokens: list[str]) -> bool:
    try:
        check_vocab_case(tokens, True)  # raises for a cased vocab (capitalised tokens)
    except SquadDataError:
        return False
    return True


def _weight_names(path: Path) -> list[str]:
    """Tensor names of a safetensors file, from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors' errors do not name the file
        raise QAError(f"could not read {path}: {exc}") from None


@dataclass
class _Loaded:
    model: object        # BertForQuestionAnswering, eval mode, on ``device``
    tokenizer: object    # tokenizers.BertWordPieceTokenizer
    device: str


@lru_cache(maxsize=2)
def _load(model_dir: Path, vocab_file: Path, do_lower_case: bool, device: str, _stamp) -> _Loaded:
    # ``_stamp`` (size and mtime of the weights) makes a model re-saved in place load afresh.
    from ..model import BertForQuestionAnswering
    from ..runtime import resolve_device
    from ..tokenization import load_tokenizer

    device = resolve_device(device)
    model = BertForQuestionAnswering.from_pretrained(model_dir)
    model.to(device)
    model.eval()  # no dropout: the same question gets the same answer
    return _Loaded(model, load_tokenizer(vocab_file, lowercase=do_lower_case), device)


def clear_model_cache() -> None:
    """Forget the models that :func:`answer` and :class:`QuestionAnswerer` keep loaded."""
    _load.cache_clear()


# ----------------------------------------------------------------------------------- the answerer
class QuestionAnswerer:
    """A fine-tuned ``BertForQuestionAnswering`` directory, loaded once, answering questions.

    Args:
        model_dir: config.json + model.safetensors (+ vocab.txt, tokenizer_config.json).
        vocab_file: the vocab when ``model_dir`` has no vocab.txt.
        do_lower_case: None: as the directory records, else as the vocab's case says.
        device: "auto" (cuda when OneFlow sees a GPU), "cuda" or "cpu".
        max_seq_length: tokens per window, [CLS] question [SEP] context [SEP]; at most the
            model's max_position_embeddings.
        doc_stride: tokens between the starts of consecutive context windows.
        max_query_length: questions are cut to this many tokens; None: 64, or half of
            max_seq_length when that is smaller (so short windows keep room for context).
        max_answer_length: longest answer, in tokens.
        n_best_size: spans considered per question (raised to top_k when smaller); the
            probabilities are a softmax over these.
        batch_size: windows per forward pass.

    Models are cached by directory, vocab, lower-casing and device (the two last used stay
    loaded), so a second ``QuestionAnswerer`` or :func:`answer` on the same directory does not
    reload it.
    """

    def __init__(self, model_dir, vocab_file=None, *, do_lower_case: bool | None = None,
                 device: str = "auto", max_seq_length: int = 384, doc_stride: int = 128,
                 max_query_length: int | None = None, max_answer_length: int = 30,
                 n_best_size: int = 20, batch_size: int = 32):
        if max_query_length is None:
            max_query_length = min(64, max_seq_length // 2)
        for name, value in (("max_seq_length", max_seq_length), ("doc_stride", doc_stride),
                            ("max_query_length", max_query_length),
                            ("max_answer_length", max_answer_length), ("n_best_size", n_best_size),
                            ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise QAError(f"{name} must be a positive integer, got {value!r}")
        if max_seq_length - max_query_length - 3 < 1:
            raise QAError(f"max_seq_length={max_seq_length} leaves no room for the context after a "
                          f"question of max_query_length={max_query_length} tokens, [CLS] and two [SEP]")
        self.model_dir, self.vocab_file, self.do_lower_case = resolve_model_dir(
            model_dir, vocab_file, do_lower_case)
        max_positions = _read_json(self.model_dir / "config.json").get("max_position_embeddings", 512)
        if max_seq_length > max_positions:
            raise QAError(f"max_seq_length={max_seq_length} exceeds the model's "
                          f"max_position_embeddings={max_positions}")
        self.max_seq_length, self.doc_stride = max_seq_length, doc_stride
        self.max_query_length, self.max_answer_length = max_query_length, max_answer_length
        self.n_best_size, self.batch_size = n_best_size, batch_size
        weights = self.model_dir / "model.safetensors"
        stamp = (weights.stat().st_size, weights.stat().st_mtime_ns)
        self._loaded = _load(self.model_dir.resolve(), self.vocab_file.resolve(), self.do_lower_case,
                             device, stamp)

    @property
    def model(self):
        """The loaded ``BertForQuestionAnswering`` (shared with other answerers of the directory)."""
        return self._loaded.model

    @property
    def device(self) -> str:
        return self._loaded.device

    def __call__(self, question, context: str | None = None, top_k: int = 1):
        """Answer one question about ``context``, or a list of ``(question, context)`` pairs.

        Returns:
            For one question: up to ``top_k`` :class:`Answer`, best first (fewer when the
            context has fewer distinct spans). For a list of pairs: one such list per pair.
        """
        if isinstance(question, str):
            if context is None:
                raise QAError("no context given: pass the text that holds the answer")
            return self._answer_all([(question, context)], top_k)[0]
        if context is not None:
            raise QAError("pass either one question and its context or a list of (question, "
                          "context) pairs, not a list and a context")
        pairs = list(question)
        if any(not (isinstance(p, (tuple, list)) and len(p) == 2) for p in pairs):
            raise QAError("expected (question, context) pairs")
        return self._answer_all(pairs, top_k)

    # ------------------------------------------------------------------------------- the steps
    def _answer_all(self, pairs: Sequence[tuple[str, str]], top_k: int) -> list[list[Answer]]:
        if not isinstance(top_k, int) or top_k < 1:
            raise QAError(f"top_k must be a positive integer, got {top_k!r}")
        for question, context in pairs:
            if not isinstance(question, str) or not question.strip():
                raise QAError("the question is empty")
            if not isinstance(context, str) or not context.strip():
                raise QAError("the context is empty")
        if not pairs:
            return []
        examples = read_squad_examples(_as_squad(pairs), is_training=False)
        features = convert_examples_to_features(
            examples, self._loaded.tokenizer, self.max_seq_length, self.doc_stride,
            self.max_query_length, is_training=False, do_lower_case=self.do_lower_case)
        results = self._logits(features)
        n_best = max(self.n_best_size, top_k)
        _, nbest = postprocess_predictions(examples, features, results, n_best_size=n_best,
                                           max_answer_length=self.max_answer_length,
                                           do_lower_case=self.do_lower_case)
        by_example: dict[int, list] = {}
        for f in features:
            by_example.setdefault(f.example_index, []).append(f)
        table = {r.unique_id: r for r in results}
        answers: list[list[Answer]] = [[] for _ in pairs]
        for index, example in enumerate(examples):
            found = []
            for entry in nbest[example.qas_id]:
                span = _locate(entry, example, by_example.get(index, []), table,
                               self.max_answer_length, self.do_lower_case)
                if span is None:  # post-processing's "empty" placeholder: no valid span at all
                    continue
                start, end = span
                found.append(Answer(example.context_text[start:end],
                                    entry["start_logit"] + entry["end_logit"],
                                    entry["probability"], start, end))
                if len(found) == top_k:
                    break
            # examples come paragraph by paragraph; the id is the pair's place in the input
            answers[int(example.qas_id)] = found
        return answers

    def _logits(self, features) -> list[RawResult]:
        """Start/end logits of every window, ``batch_size`` windows of similar length per pass."""
        windows = ({k: getattr(f, k) for k in ("input_ids", "segment_ids", "input_mask")} for f in features)
        starts, ends = qa_logits(self.model, windows, self.batch_size, self._loaded.device)
        return [RawResult(f.unique_id, s, e) for f, s, e in zip(features, starts, ends)]


def answer(model_dir, question, context: str | None = None, top_k: int = 1, **options):
    """One-shot :class:`QuestionAnswerer` ``(model_dir, **options)(question, context, top_k)``.

    The model stays cached (see :func:`clear_model_cache`), so calling this again on the same
    directory costs only the question. ``options`` are QuestionAnswerer's (``vocab_file``,
    ``max_seq_length``, ``doc_stride``, ``max_answer_length``, ``device``, ...).

    Returns:
        list[Answer], best first; for a list of (question, context) pairs, one list per pair.
    """
    return QuestionAnswerer(model_dir, **options)(question, context, top_k)


# ----------------------------------------------------------------------------- helpers
def _as_squad(pairs) -> dict:
    """(question, context) pairs -> a SQuAD v1.1 dataset; questions on one context share its
    paragraph, so the context is tokenised once."""
    paragraphs: dict[str, list] = {}
    for n, (question, context) in enumerate(pairs):
        paragraphs.setdefault(context, []).append({"id": str(n), "question": question,
                                                   "answers": []})
    return {"data": [{"title": "", "paragraphs": [{"context": c, "qas": qas}
                                                  for c, qas in paragraphs.items()]}]}


def _locate(entry: dict, example, features, table, max_answer_length: int,
            do_lower_case: bool) -> tuple[int, int] | None:
    """Character span ``[start, end)`` in the context of one n-best entry, or None.

    The entry's logits are float32 values of the model's output, so the windows' positions that
    carry exactly those logits are the candidates; the first valid pair (start in its
    max-context window, end after it, within max_answer_length) whose text is the entry's, in
    window then position order, is the span.
    """
    for feature in features:
        result = table[feature.unique_id]
        n = feature.num_tokens
        starts = np.flatnonzero(result.start_logits[:n] == np.float32(entry["start_logit"]))
        ends = np.flatnonzero(result.end_logits[:n] == np.float32(entry["end_logit"]))
        for s in starts.tolist():
            if not feature.is_max_context(s):
                continue
            for e in ends.tolist():
                if not (s <= e < s + max_answer_length) or feature.orig_word_index(e) < 0:
                    continue
                start, end, text = _span_in_context(feature, example, s, e, do_lower_case)
                if text == entry["text"]:
                    return start, end
    return None


def _span_in_context(feature, example, s: int, e: int, do_lower_case: bool) -> tuple[int, int, str]:
    """Sequence positions ``s..e`` of a window -> ``[start, end)`` characters of the context, and
    the text post-processing makes of them (its words joined by single spaces)."""
    pieces = feature.tokens[s : e + 1]
    tok_text = " ".join(" ".join(pieces).replace(" ##", "").replace("##", "").split())
    first_word, last_word = feature.orig_word_index(s), feature.orig_word_index(e)
    words = example.doc_tokens[first_word : last_word + 1]
    orig_text = " ".join(words)
    a, b = final_text_span(tok_text, orig_text, do_lower_case)
    # Where each word starts in the joined text and in the context; a and b - 1 are never the
    # joining spaces (the span starts and ends on a non-space character).
    word_starts = np.searchsorted(example.char_to_word_offset, np.arange(first_word, last_word + 1))
    joined = 0
    start = end = None
    for word, char_start in zip(words, word_starts.tolist()):
        if start is None and a < joined + len(word):
            start = char_start + (a - joined)
        if b - 1 < joined + len(word):
            end = char_start + (b - 1 - joined) + 1
            break
        joined += len(word) + 1
    return start, end, orig_text[a:b]
