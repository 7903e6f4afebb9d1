"""SQuAD examples -> fixed-length model inputs ("features"), the way BERT's authors built them.

Each example becomes ``[CLS] question [SEP] context-window [SEP]`` padded to ``max_seq_length``.
A context longer than the room left after the question is covered by several overlapping
windows ("doc spans"), each starting ``doc_stride`` tokens after the previous one, so one
example can give several features.

Bookkeeping that post-processing needs, per feature:

* ``token_to_orig_map``: sequence position -> index of the whitespace word of the context the
  token came from (WordPiece runs word by word, so every sub-token has exactly one word);
* ``token_is_max_context``: a context token appears in several overlapping windows; only the
  window where it has the most context on both sides (min(left, right) + 0.01 * window length,
  first window on ties) may start an answer there. Without it, one answer is predicted twice.

Training labels are the token positions of the first reference answer; a window that does not
contain the whole answer points both labels at [CLS] (position 0). The answer's token span is
first tightened to the sub-tokens of the answer text: "(1895-1943)." holds the answer "1895",
and the tokens "( 1895 - 1943 ) ." shrink to just "1895".

Getting the features back for post-processing: the eval OFRecords hold only the model inputs
(``input_ids``, ``input_mask``, ``segment_ids``, ``unique_ids``). The metadata (tokens, maps) is
*recomputed* from the same SQuAD JSON and vocab, which is deterministic and takes a few
seconds; :func:`write_squad_ofrecords` leaves a small ``squad_features.json`` manifest next to
the shards (settings, counts, sha256 of the source file and a digest of every feature) and
:func:`load_eval_features` checks the recomputation against it, so features that do not
match the OFRecords can never be paired with the model's logits silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..schemas import squad_eval_schema, squad_train_schema
from .examples import SquadDataError, SquadExample, read_squad_examples

__all__ = [
    "FIRST_UNIQUE_ID",
    "MANIFEST_NAME",
    "SquadFeature",
    "squad_train_schema",
    "squad_eval_schema",
    "check_vocab_case",
    "convert_examples_to_features",
    "feature_to_record",
    "features_digest",
    "write_squad_ofrecords",
    "make_squad_data",
    "load_eval_features",
]

FIRST_UNIQUE_ID = 1000000000
MANIFEST_NAME = "squad_features.json"


@dataclass
class _TokenizedContext:
    """WordPiece tokens of one paragraph, shared by all features of all its questions."""

    tokens: list[str]
    ids: np.ndarray  # int32 [num_tokens]
    tok_to_orig_index: np.ndarray  # int32 [num_tokens]: word index of each token
    orig_to_tok_index: np.ndarray  # int32 [num_words]: first token of each word


@dataclass(eq=False)
class SquadFeature:
    """One window of one example, as the model sees it, plus the maps back to the text.

    Positions are indices into the sequence ``[CLS] query [SEP] doc-window [SEP] pad...``;
    the window's tokens sit at positions ``doc_offset .. doc_offset + doc_span_length - 1``.
    """

    unique_id: int
    example_index: int
    qas_id: str
    doc_span_index: int
    input_ids: np.ndarray = field(repr=False)  # int32 [max_seq_length], 0-padded
    num_tokens: int  # tokens before padding, both [SEP] included
    query_tokens: list[str] = field(repr=False)
    doc_span_start: int  # index of the window's first token in the paragraph's tokens
    doc_span_length: int
    max_context: np.ndarray = field(repr=False)  # bool [doc_span_length]
    #: answer token positions (training label); 0 and 0 ([CLS]) when the window misses the
    #: answer; None when the example has no answer.
    start_position: int | None = None
    end_position: int | None = None
    context: _TokenizedContext = field(default=None, repr=False)

    @property
    def max_seq_length(self) -> int:
        return len(self.input_ids)

    @property
    def doc_offset(self) -> int:
        """Sequence position of the window's first token."""
        return len(self.query_tokens) + 2

    @property
    def tokens(self) -> list[str]:
        doc = self.context.tokens[self.doc_span_start : self.doc_span_start + self.doc_span_length]
        return ["[CLS]", *self.query_tokens, "[SEP]", *doc, "[SEP]"]

    @property
    def input_mask(self) -> np.ndarray:
        """int32 [max_seq_length]: 1 on real tokens, 0 on padding."""
        mask = np.zeros(self.max_seq_length, dtype=np.int32)
        mask[: self.num_tokens] = 1
        return mask

    @property
    def segment_ids(self) -> np.ndarray:
        """int32 [max_seq_length]: 0 for [CLS] question [SEP], 1 for the window and its [SEP]."""
        segments = np.zeros(self.max_seq_length, dtype=np.int32)
        segments[self.doc_offset : self.num_tokens] = 1
        return segments

    def orig_word_index(self, position: int) -> int:
        """Word index in the example's ``doc_tokens`` of the token at ``position``, or -1
        when the position is not a context token (query, [CLS], [SEP], padding)."""
        i = position - self.doc_offset
        if 0 <= i < self.doc_span_length:
            return int(self.context.tok_to_orig_index[self.doc_span_start + i])
        return -1

    def is_max_context(self, position: int) -> bool:
        i = position - self.doc_offset
        return bool(0 <= i < self.doc_span_length and self.max_context[i])

    @property
    def token_to_orig_map(self) -> dict[int, int]:
        """Sequence position -> word index, for the window's tokens only."""
        words = self.context.tok_to_orig_index[
            self.doc_span_start : self.doc_span_start + self.doc_span_length
        ]
        return {self.doc_offset + i: int(w) for i, w in enumerate(words)}

    @property
    def token_is_max_context(self) -> dict[int, bool]:
        return {self.doc_offset + i: bool(m) for i, m in enumerate(self.max_context)}


# ---------------------------------------------------------------------------------------------
# Vocab and tokenizer checks


def _vocab_tokens(vocab) -> list[str]:
    if isinstance(vocab, (str, Path)):
        try:
            with open(vocab, encoding="utf-8") as f:
                return [line.rstrip("\r\n") for line in f]
        except FileNotFoundError:
            raise SquadDataError(f"vocab file not found: {vocab}") from None
        except UnicodeDecodeError as err:
            raise SquadDataError(f"vocab file {vocab} is not UTF-8 text ({err})") from None
    if hasattr(vocab, "get_vocab"):  # a tokenizers.Tokenizer
        return list(vocab.get_vocab())
    return list(vocab)


def _tokenizer_lowercases(tokenizer) -> bool | None:
    normalizer = getattr(tokenizer, "normalizer", None)
    if normalizer is None:
        return False
    try:
        return normalizer.normalize_str("Ab") == "ab"
    except Exception:  # an exotic normalizer: cannot tell
        return None


def check_vocab_case(vocab, do_lower_case: bool | None = None) -> bool:
    """Refuse a vocab whose case does not match the lower-casing setting.

    An uncased vocab has no capitals, so without lower-casing every capitalised word becomes
    [UNK]; a cased vocab with lower-casing throws away what it was trained to see. Both train
    without error and silently score badly, so they are errors here.

    Args:
        vocab: path to vocab.txt, a ``tokenizers.Tokenizer`` or an iterable of tokens.
        do_lower_case: the setting to check; None takes it from the tokenizer's normaliser
            (only possible when ``vocab`` is a tokenizer).

    Returns:
        True when the vocab is uncased.
    """
    tokens = _vocab_tokens(vocab)
    if do_lower_case is None:
        do_lower_case = _tokenizer_lowercases(vocab)
    elif hasattr(vocab, "get_vocab"):
        lowercases = _tokenizer_lowercases(vocab)
        if lowercases is not None and lowercases != do_lower_case:
            raise SquadDataError(
                f"do_lower_case={do_lower_case} but the tokenizer "
                f"{'does' if lowercases else 'does not'} lower-case its input; load it with "
                f"lowercase={do_lower_case}"
            )
    # Special tokens ([CLS], <s>, ...) say nothing about the case of the text.
    words = [t for t in tokens if any(c.isalpha() for c in t) and t[:1] not in "[<"]
    if not words:
        raise SquadDataError("the vocab has no word tokens")
    capitalised = sum(1 for t in words if t != t.lower())
    # bert-base-uncased has 0 such tokens, bert-base-cased about 28%.
    uncased = capitalised / len(words) < 0.01
    if do_lower_case is None:
        return uncased
    if uncased and not do_lower_case:
        raise SquadDataError(
            "the vocab is uncased (no capitalised tokens) but lower-casing is off: every "
            "capitalised word would become [UNK]; use --do_lower_case (do_lower_case=True)"
        )
    if not uncased and do_lower_case:
        raise SquadDataError(
            f"the vocab is cased ({capitalised} of {len(words)} tokens have capitals) but "
            "lower-casing is on; use --do_lower_case false (do_lower_case=False)"
        )
    return uncased


def _plain_tokenizer(tokenizer):
    """The tokenizer without truncation/padding (we window and pad ourselves); copied when it
    has them so the caller's object is not changed."""
    if getattr(tokenizer, "truncation", None) or getattr(tokenizer, "padding", None):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
    return tokenizer


# ---------------------------------------------------------------------------------------------
# The conversion


def _tokenize_context(tokenizer, words: list[str]) -> _TokenizedContext:
    # One call per paragraph with pre-split words is the same as tokenising word by word
    # (normalisation, punctuation splitting and WordPiece all stay inside a word) and word_ids
    # gives each sub-token's word. A word that normalises to nothing (e.g. U+200B) gets none.
    if words:
        encoding = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
        tokens = list(encoding.tokens)
        ids = np.asarray(encoding.ids, dtype=np.int32)
        tok_to_orig = np.asarray(encoding.word_ids, dtype=np.int32)
    else:
        tokens, ids, tok_to_orig = [], np.zeros(0, np.int32), np.zeros(0, np.int32)
    # First token of each word; a word without tokens points at the next word's first token,
    # which is where its answer span would start.
    orig_to_tok = np.searchsorted(tok_to_orig, np.arange(len(words)), side="left").astype(np.int32)
    return _TokenizedContext(tokens, ids, tok_to_orig, orig_to_tok)


def _improve_answer_span(doc_tokens, start: int, end: int, answer_tokens: list[str]):
    """Shrink [start, end] to the sub-span whose tokens are exactly the answer's tokens."""
    target = " ".join(answer_tokens)
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if " ".join(doc_tokens[new_start : new_end + 1]) == target:
                return new_start, new_end
    return start, end


def _doc_spans(num_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) windows covering num_tokens; the last one ends at the last token."""
    spans = []
    start = 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def _best_span_per_token(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """int [num_tokens]: the window in which each token has its maximum context."""
    scores = np.full((len(spans), num_tokens), -np.inf)
    for k, (start, length) in enumerate(spans):
        position = np.arange(start, start + length)
        left = position - start
        right = start + length - 1 - position
        scores[k, start : start + length] = np.minimum(left, right) + 0.01 * length
    # argmax takes the first maximum: ties go to the earlier window, as in BERT's reference.
    return np.argmax(scores, axis=0) if len(spans) else np.zeros(num_tokens, dtype=np.int64)


def convert_examples_to_features(
    examples: Sequence[SquadExample],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool = False,
    *,
    do_lower_case: bool | None = None,
    unique_id_start: int = FIRST_UNIQUE_ID,
    progress: bool = False,
) -> list[SquadFeature]:
    """Turn examples into features (one per doc-stride window).

    Args:
        examples: from :func:`read_squad_examples`.
        tokenizer: a ``tokenizers.Tokenizer`` with a WordPiece model and BERT normaliser,
            e.g. ``bertlib.tokenization.load_tokenizer(vocab_file)``.
        max_seq_length: sequence length, [CLS] and the two [SEP] included.
        doc_stride: distance between the starts of consecutive windows, in tokens.
        max_query_length: longer questions are cut to this many tokens.
        is_training: every example must have an answer (its token positions are the labels).
        do_lower_case: when given, must agree with the tokenizer; the vocab's case is always
            checked against the tokenizer's lower-casing.
        unique_id_start: unique_id of the first feature; the rest count up by one.
        progress: show a progress bar.

    Returns:
        The features, in example order; ``unique_id`` runs from ``unique_id_start``.
    """
    max_tokens_for_doc = max_seq_length - max_query_length - 3
    if max_tokens_for_doc <= 0:
        raise SquadDataError(
            f"max_seq_length={max_seq_length} leaves no room for the context after a question "
            f"of max_query_length={max_query_length} tokens plus [CLS] and two [SEP]"
        )
    if doc_stride <= 0:
        raise SquadDataError(f"doc_stride must be positive, got {doc_stride}")
    check_vocab_case(tokenizer, do_lower_case)
    tokenizer = _plain_tokenizer(tokenizer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise SquadDataError("the vocab has no [CLS] or no [SEP] token")

    iterator = enumerate(examples)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(examples), desc="features", unit="example")

    features: list[SquadFeature] = []
    unique_id = unique_id_start
    context = None
    context_words = None
    for example_index, example in iterator:
        if example.doc_tokens is not context_words:  # examples of one paragraph share it
            context_words = example.doc_tokens
            context = _tokenize_context(tokenizer, context_words)
        query = tokenizer.encode(example.question_text, add_special_tokens=False)
        query_tokens = list(query.tokens[:max_query_length])
        query_ids = np.asarray(query.ids[:max_query_length], dtype=np.int32)
        # Max-context windows are per question: the room left depends on the question length.
        room = max_seq_length - len(query_tokens) - 3
        num_doc_tokens = len(context.tokens)

        tok_start = tok_end = None
        if example.start_position is not None:
            tok_start = int(context.orig_to_tok_index[example.start_position])
            if example.end_position < len(example.doc_tokens) - 1:
                tok_end = int(context.orig_to_tok_index[example.end_position + 1]) - 1
            else:
                tok_end = num_doc_tokens - 1
            answer_tokens = tokenizer.encode(
                example.orig_answer_text, add_special_tokens=False
            ).tokens
            tok_start, tok_end = _improve_answer_span(
                context.tokens, tok_start, tok_end, answer_tokens
            )
        elif is_training:
            raise SquadDataError(f"question {example.qas_id!r} has no answer to train on")

        spans = _doc_spans(num_doc_tokens, room, doc_stride)
        best_span = _best_span_per_token(spans, num_doc_tokens)
        for span_index, (span_start, span_length) in enumerate(spans):
            span_end = span_start + span_length - 1
            ids = np.concatenate(
                [[cls_id], query_ids, [sep_id], context.ids[span_start : span_end + 1], [sep_id]]
            ).astype(np.int32)
            input_ids = np.zeros(max_seq_length, dtype=np.int32)
            input_ids[: len(ids)] = ids

            start_position = end_position = None
            if tok_start is not None:
                if span_start <= tok_start and tok_end <= span_end:
                    doc_offset = len(query_tokens) + 2
                    start_position = tok_start - span_start + doc_offset
                    end_position = tok_end - span_start + doc_offset
                else:
                    start_position = end_position = 0
            features.append(
                SquadFeature(
                    unique_id=unique_id,
                    example_index=example_index,
                    qas_id=example.qas_id,
                    doc_span_index=span_index,
                    input_ids=input_ids,
                    num_tokens=len(ids),
                    query_tokens=query_tokens,
                    doc_span_start=span_start,
                    doc_span_length=span_length,
                    max_context=best_span[span_start : span_end + 1] == span_index,
                    start_position=start_position,
                    end_position=end_position,
                    context=context,
                )
            )
            unique_id += 1
    return features


# ---------------------------------------------------------------------------------------------
# OFRecords


def feature_to_record(feature: SquadFeature, is_training: bool) -> dict:
    """Feature name -> numpy array, in the train or eval schema."""
    record = {
        "input_ids": feature.input_ids,
        "input_mask": feature.input_mask,
        "segment_ids": feature.segment_ids,
    }
    if is_training:
        if feature.start_position is None:
            raise SquadDataError(f"feature {feature.unique_id} has no answer positions")
        record["start_positions"] = np.array([feature.start_position], dtype=np.int32)
        record["end_positions"] = np.array([feature.end_position], dtype=np.int32)
    else:
        record["unique_ids"] = np.array([feature.unique_id], dtype=np.int32)
    return record


def features_digest(features: Iterable[SquadFeature]) -> str:
    """sha256 over every feature's unique_id, input_ids and answer positions."""
    h = hashlib.sha256()
    for f in features:
        h.update(np.int64(f.unique_id).tobytes())
        h.update(np.ascontiguousarray(f.input_ids, dtype=np.int32).tobytes())
        h.update(np.array([f.doc_offset, f.num_tokens], dtype=np.int32).tobytes())
    return h.hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_squad_ofrecords(
    features: Sequence[SquadFeature],
    output_dir,
    is_training: bool,
    data_part_num: int = 1,
    *,
    metadata: dict | None = None,
) -> dict:
    """Write features as OFRecord shards ``output_dir/part-0 ...`` plus the manifest.

    Args:
        features: from :func:`convert_examples_to_features`, all of the same length.
        output_dir: created if missing.
        is_training: train schema (with start/end positions) or eval schema (with unique_ids).
        data_part_num: number of shards; must be >= the number of ranks that will read them.
        metadata: settings to record in the manifest (doc_stride, max_query_length,
            do_lower_case, input_file, ...); :func:`load_eval_features` reads them back.

    Returns:
        The manifest written to ``output_dir/squad_features.json``.
    """
    from bertlib.ofrecord import write_shards

    if not features:
        raise SquadDataError("no features to write")
    if data_part_num < 1:
        raise SquadDataError(f"data_part_num must be >= 1, got {data_part_num}")
    seq_length = features[0].max_seq_length
    if any(f.max_seq_length != seq_length for f in features):
        raise SquadDataError("features of different max_seq_length cannot share one data set")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_shards(
        (feature_to_record(f, is_training) for f in features), output_dir, data_part_num
    )
    schema = squad_train_schema(seq_length) if is_training else squad_eval_schema(seq_length)
    manifest = {
        "format": "bertlib-squad-features",
        "version": 1,
        "is_training": is_training,
        "num_features": len(features),
        "num_examples": len({f.example_index for f in features}),
        "max_seq_length": seq_length,
        "first_unique_id": features[0].unique_id,
        "data_part_num": data_part_num,
        "schema": {name: [np.dtype(dtype).name, length] for name, (dtype, length) in schema.items()},
        "features_sha256": features_digest(features),
        **(metadata or {}),
    }
    with open(output_dir / MANIFEST_NAME, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def make_squad_data(
    input_file,
    tokenizer,
    output_dir,
    is_training: bool,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    data_part_num: int = 1,
    *,
    do_lower_case: bool | None = None,
    progress: bool = False,
) -> dict:
    """SQuAD JSON (path or parsed object) -> OFRecord shards + manifest in one call (what
    ``bert-make-squad-data`` runs).

    Returns the manifest, with ``num_examples``, ``num_features`` and ``skipped`` (ids of
    training questions skipped because their answer cannot be aligned to whole words).
    """
    skipped: list[str] = []
    examples = read_squad_examples(input_file, is_training=is_training, skipped=skipped)
    features = convert_examples_to_features(
        examples, tokenizer, max_seq_length, doc_stride, max_query_length, is_training,
        do_lower_case=do_lower_case, progress=progress,
    )
    if do_lower_case is None:
        do_lower_case = _tokenizer_lowercases(tokenizer)
    metadata = {}
    if isinstance(input_file, (str, Path)):  # not for an in-memory JSON object
        metadata["input_file"] = str(Path(input_file).resolve())
        metadata["input_sha256"] = sha256_file(input_file)
    metadata |= {
        "doc_stride": doc_stride,
        "max_query_length": max_query_length,
        "do_lower_case": do_lower_case,
        "vocab_size": tokenizer.get_vocab_size(),
        "skipped": skipped,
    }
    manifest = write_squad_ofrecords(
        features, output_dir, is_training, data_part_num, metadata=metadata
    )
    manifest["num_examples"] = len(examples)
    return manifest


def load_eval_features(
    data_dir, input_file, tokenizer, *, progress: bool = False
) -> tuple[list[SquadExample], list[SquadFeature]]:
    """Recompute the examples and features behind the eval OFRecords in ``data_dir``.

    The settings come from the manifest that :func:`write_squad_ofrecords` left there; the
    recomputed features must reproduce its digest (same file, vocab and settings), otherwise
    the logits of the OFRecords would be mapped onto the wrong text.

    Raises:
        SquadDataError: no manifest, a training data set, a changed input file, or features
            that do not match.
    """
    manifest_path = Path(data_dir) / MANIFEST_NAME
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise SquadDataError(
            f"{manifest_path} not found: was {data_dir} written by bert-make-squad-data?"
        ) from None
    except json.JSONDecodeError as err:
        raise SquadDataError(f"{manifest_path} is not valid JSON: {err}") from None
    if manifest.get("is_training", True):
        raise SquadDataError(f"{data_dir} holds training features; eval features are needed")
    if "input_sha256" in manifest and sha256_file(input_file) != manifest["input_sha256"]:
        raise SquadDataError(
            f"{input_file} is not the file {data_dir} was made from "
            f"({manifest.get('input_file')}); its sha256 differs"
        )
    examples = read_squad_examples(input_file, is_training=False)
    features = convert_examples_to_features(
        examples,
        tokenizer,
        max_seq_length=manifest["max_seq_length"],
        doc_stride=manifest.get("doc_stride", 128),
        max_query_length=manifest.get("max_query_length", 64),
        is_training=False,
        do_lower_case=manifest.get("do_lower_case"),
        unique_id_start=manifest.get("first_unique_id", FIRST_UNIQUE_ID),
        progress=progress,
    )
    if len(features) != manifest["num_features"] or (
        features_digest(features) != manifest["features_sha256"]
    ):
        raise SquadDataError(
            f"the features recomputed from {input_file} ({len(features)}) do not match the "
            f"{manifest['num_features']} in {data_dir}: a different vocab or tokenizer?"
        )
    return examples, features
