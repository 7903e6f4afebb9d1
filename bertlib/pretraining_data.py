"""Corpus -> BERT pre-training instances -> OFRecord shards.

The algorithm is the one BERT's authors published with their code (``create_pretraining_data``),
re-implemented here:

1. Read documents of sentences (:mod:`bertlib.corpus`) and WordPiece them (:mod:`bertlib.tokenization`).
2. Walk each document, gathering whole sentences into a chunk until it reaches the target length
   (``seq_length - 3``, for ``[CLS] A [SEP] B [SEP]``; with probability ``short_seq_prob`` a random
   shorter target, so the model also sees short inputs). Cut the chunk at a random sentence
   boundary into A and B.
3. Next-sentence prediction: half of the time (always when the chunk has one sentence) B is
   replaced by a stretch of sentences from a random *other* document (label 1, "random next");
   the sentences that were not used go back to the document walk. Otherwise B really follows A
   (label 0).
4. Truncate the longer of A and B, one token at a time from a random end, until the pair fits.
5. Masked LM: choose ``round(masked_lm_prob * length)`` positions (at most
   ``max_predictions_per_seq``, never ``[CLS]``/``[SEP]``); 80% become ``[MASK]``, 10% a random
   token, 10% stay as they are. With ``whole_word_mask`` all pieces of a word are chosen together.
6. Repeat the whole pass ``dupe_factor`` times with different random draws, so each sentence is
   seen with several different masks; shuffle; write round-robin into ``data_part_num`` shards.

Two deliberate differences from the published script: the short target length is drawn for every
chunk (the script draws it once per document, which makes whole books short or long); and the
random replacement token is drawn from the real tokens of the vocabulary, never from
``[PAD]``/``[CLS]``/``[unused*]``.

Determinism: every document window (at most 1,000 sentences) has its own random generator seeded by
``(seed, pass, window)``, the windows' outputs are gathered in order and shuffled with a seeded
generator, so the same seed gives the same bytes whatever the number of worker processes.

Records (:mod:`bertlib.schemas`; the names of Google's script, ``S = seq_length``, ``P = max_predictions_per_seq``):

=========================  =========  =====================================================
``input_ids``              int32[S]   ``[CLS] A [SEP] B [SEP]`` then ``[PAD]`` (id of it) ...
``input_mask``             int32[S]   1 on real tokens, 0 on padding
``segment_ids``            int32[S]   0 for ``[CLS]``, A and its ``[SEP]``; 1 for B and its ``[SEP]``
``masked_lm_positions``    int32[P]   positions predicted (ascending), then 0
``masked_lm_ids``          int32[P]   the original token ids there, then 0
``masked_lm_weights``      float32[P] 1.0 for a real prediction, 0.0 for padding
``next_sentence_labels``   int32[1]   0: B follows A, 1: B is random
=========================  =========  =====================================================
"""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import random
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from .corpus import FORMATS, CorpusError, Document, find_text_files, parse_documents, read_corpus, read_text
from .ofrecord import encode_packed_entry, encode_varints, write_shards
from .schemas import pretraining_schema
from .tokenization import SPECIAL_TOKENS, encode_ids, load_tokenizer, read_vocab, special_token_ids

__all__ = ["pretraining_schema", "create_pretraining_data", "make_instances", "render_instance",
           "PretrainingDataSummary", "METADATA_FILE"]

METADATA_FILE = "bertlib_data.json"
_WINDOW_SENTENCES = 1000   # a long document is walked in windows of this many sentences
_TASK_SENTENCES = 4000     # windows are batched into tasks of about this many sentences
_SHUFFLE_BUFFER = 1 << 18  # records held for shuffling (~230 MB at seq 128); smaller data: a full shuffle


# --------------------------------------------------------------------------------------------------
# The tokenised corpus: flat arrays, cheap to share with forked workers (no per-object refcounts).
# --------------------------------------------------------------------------------------------------

@dataclass
class _Corpus:
    tokens: np.ndarray       # int32[T], every sentence's WordPiece ids back to back
    sent_bounds: np.ndarray  # int64[S+1], sentence i is tokens[sent_bounds[i]:sent_bounds[i+1]]
    doc_bounds: np.ndarray   # int64[D+1], document d is sentences doc_bounds[d]..doc_bounds[d+1]-1


@dataclass
class _Settings:
    seq_length: int
    max_predictions: int
    masked_lm_prob: float
    short_seq_prob: float
    whole_word_mask: bool
    cls_id: int
    sep_id: int
    mask_id: int
    replacement_ids: np.ndarray  # int32[R], real tokens a masked position may be replaced by
    is_continuation: np.ndarray  # bool[V], token is a "##" piece


def _tokenize_documents(docs: Sequence[Document], tokenizer, batch_size: int = 10000):
    """WordPiece every sentence; drop sentences without tokens and documents without sentences.

    Returns (tokens int32[T], sentence lengths int64[S], sentences per document int64[D]).
    """
    sentences = [s for d in docs for s in d.sentences]
    ids: list[list[int]] = []
    for start in range(0, len(sentences), batch_size):
        ids.extend(encode_ids(tokenizer, sentences[start:start + batch_size]))
    lengths = np.fromiter((len(x) for x in ids), np.int64, count=len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), np.int32, count=int(lengths.sum()))
    keep = lengths > 0
    doc_of_sentence = np.repeat(np.arange(len(docs)), [len(d.sentences) for d in docs])[keep]
    per_doc = np.bincount(doc_of_sentence, minlength=len(docs))
    return tokens, lengths[keep], per_doc[per_doc > 0]


def _assemble(pieces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> _Corpus:
    """Concatenate per-file results of :func:`_tokenize_documents` into one corpus."""
    tokens = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int32)
    lengths = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int64)
    per_doc = np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, np.int64)
    return _Corpus(tokens, np.concatenate(([0], np.cumsum(lengths))),
                   np.concatenate(([0], np.cumsum(per_doc))))


def _settings(vocab: list[str], seq_length: int, max_predictions: int, masked_lm_prob: float,
              short_seq_prob: float, whole_word_mask: bool) -> _Settings:
    special = special_token_ids(vocab)
    real = [i for i, t in enumerate(vocab)
            if t not in SPECIAL_TOKENS and not (t.startswith("[") and t.endswith("]"))]
    return _Settings(seq_length, max_predictions, masked_lm_prob, short_seq_prob, whole_word_mask,
                     special["[CLS]"], special["[SEP]"], special["[MASK]"],
                     np.asarray(real, np.int32), np.array([t.startswith("##") for t in vocab]))


def _windows(corpus: _Corpus) -> list[tuple[int, int, int]]:
    """``(document, first sentence, end sentence)`` pieces of at most _WINDOW_SENTENCES sentences."""
    out = []
    for d in range(len(corpus.doc_bounds) - 1):
        lo, hi = int(corpus.doc_bounds[d]), int(corpus.doc_bounds[d + 1])
        for s in range(lo, hi, _WINDOW_SENTENCES):
            out.append((d, s, min(s + _WINDOW_SENTENCES, hi)))
    return out


# --------------------------------------------------------------------------------------------------
# One window of one document -> instances
# --------------------------------------------------------------------------------------------------

def _truncated_lengths(la: int, lb: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after removing tokens one at a time from the longer segment (B on ties)."""
    excess = la + lb - max_tokens
    if excess <= 0:
        return la, lb
    gap = min(abs(la - lb), excess)
    if la > lb:
        la -= gap
    else:
        lb -= gap
    excess -= gap
    return la - excess // 2, lb - (excess - excess // 2)


def _mask(ids: np.ndarray, la: int, cfg: _Settings, rng: np.random.Generator):
    """Choose and corrupt the masked positions of ``ids`` (int32[length], no padding) in place.

    Returns (positions int32[k] ascending, original ids int32[k]).
    """
    length = ids.size
    n = length - 3  # candidates: every token of A and B, never [CLS]/[SEP]
    num = min(cfg.max_predictions, max(1, int(round(length * cfg.masked_lm_prob))), n)
    if not cfg.whole_word_mask:
        # A uniform random subset of the candidates, in "candidate index" space: index i < la is
        # position 1 + i (in A), the others skip A's [SEP].
        index = np.sort(np.argpartition(rng.random(n), num - 1)[:num])
        chosen = index + 1 + (index >= la)
    else:
        candidates = np.concatenate((np.arange(1, 1 + la), np.arange(2 + la, length - 1)))
        # A word starts at a non-"##" piece, or at the first token of a segment.
        starts = ~cfg.is_continuation[ids[candidates]]
        starts[0] = True
        starts[la] = True  # candidates[la] is B's first token
        groups = np.split(candidates, np.flatnonzero(starts)[1:])
        picked: list[np.ndarray] = []
        count = 0
        for g in rng.permutation(len(groups)):
            if count >= num:
                break
            if count + groups[g].size > num:
                continue
            picked.append(groups[g])
            count += groups[g].size
        chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    original = ids[chosen]
    draw = rng.random(chosen.size)
    ids[chosen[draw < 0.8]] = cfg.mask_id
    random_pos = chosen[draw >= 0.9]
    if random_pos.size:
        ids[random_pos] = cfg.replacement_ids[rng.integers(0, cfg.replacement_ids.size, random_pos.size)]
    return chosen.astype(np.int32), original


class _Instance(NamedTuple):
    """One instance before padding: ``ids`` int32[length] = [CLS] A [SEP] B [SEP], masks applied."""
    ids: np.ndarray
    la: int
    lb: int
    positions: np.ndarray  # int32[k], ascending
    originals: np.ndarray  # int32[k]
    random_next: int


def _window_instances(corpus: _Corpus, cfg: _Settings, doc: int, s0: int, s1: int,
                      rngs: tuple[random.Random, np.random.Generator]) -> Iterator[_Instance]:
    """Google's per-document walk over sentences ``s0..s1-1`` of document ``doc``.

    ``rngs``: Python's generator for the scalar draws (NumPy's costs ~10x more per scalar), NumPy's
    for the masks.
    """
    py, rng = rngs
    sb, tokens, db = corpus.sent_bounds, corpus.tokens, corpus.doc_bounds
    num_docs = len(db) - 1
    max_tokens = cfg.seq_length - 3
    cls_sep = np.array([cfg.cls_id], np.int32), np.array([cfg.sep_id], np.int32)

    def target_length() -> int:
        if py.random() < cfg.short_seq_prob:
            return py.randint(2, max_tokens)
        return max_tokens

    target = target_length()
    chunk_start, chunk_tokens, i = s0, 0, s0
    while i < s1:
        chunk_tokens += int(sb[i + 1] - sb[i])
        if i == s1 - 1 or chunk_tokens >= target:
            n_seg = i + 1 - chunk_start
            a_end = chunk_start + (py.randint(1, n_seg - 1) if n_seg >= 2 else 1)
            a0, a1 = int(sb[chunk_start]), int(sb[a_end])
            if n_seg == 1 or py.random() < 0.5:
                random_next = 1
                other = py.randrange(num_docs - 1)
                other += other >= doc  # uniform over the other documents
                lo, hi = int(db[other]), int(db[other + 1])
                j = py.randrange(lo, hi)
                b0 = int(sb[j])
                need = target - (a1 - a0)
                while j < hi:
                    j += 1
                    if sb[j] - b0 >= need:
                        break
                b1 = int(sb[j])
                i = a_end - 1  # the chunk's unused sentences go back to the walk
            else:
                random_next = 0
                b0, b1 = a1, int(sb[i + 1])
            la, lb = _truncated_lengths(a1 - a0, b1 - b0, max_tokens)
            # Each removed token came off the front or the back with probability 1/2.
            if a1 - a0 > la:
                a0 += int(rng.binomial(a1 - a0 - la, 0.5))
            if b1 - b0 > lb:
                b0 += int(rng.binomial(b1 - b0 - lb, 0.5))
            ids = np.concatenate((cls_sep[0], tokens[a0:a0 + la], cls_sep[1], tokens[b0:b0 + lb], cls_sep[1]))
            positions, originals = _mask(ids, la, cfg, rng)
            yield _Instance(ids, la, lb, positions, originals, random_next)
            chunk_start, chunk_tokens = i + 1, 0
            target = target_length()
        i += 1


def _features(inst: _Instance, cfg: _Settings) -> dict[str, np.ndarray]:
    """The padded arrays of one record (the table in the module docstring)."""
    seq, pred, length, k = cfg.seq_length, cfg.max_predictions, inst.ids.size, inst.positions.size
    ids = np.zeros(seq, np.int32)
    ids[:length] = inst.ids
    mask = np.zeros(seq, np.int32)
    mask[:length] = 1
    segments = np.zeros(seq, np.int32)
    segments[2 + inst.la:length] = 1
    positions, originals, weights = np.zeros(pred, np.int32), np.zeros(pred, np.int32), np.zeros(pred, np.float32)
    positions[:k], originals[:k], weights[:k] = inst.positions, inst.originals, 1.0
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments,
            "masked_lm_positions": positions, "masked_lm_ids": originals,
            "masked_lm_weights": weights,
            "next_sentence_labels": np.array([inst.random_next], np.int32)}


_F32_ONE, _F32_ZERO = struct.pack("<f", 1.0), struct.pack("<f", 0.0)


def _payload(inst: _Instance, cfg: _Settings) -> bytes:
    """``encode_record(_features(inst, cfg))``, built directly: the hot loop of data making.

    Padding, mask and segment ids are runs of 0/1, whose varints are single bytes, so they need no
    arrays at all (tests check the bytes are identical).
    """
    seq, pred, length, k = cfg.seq_length, cfg.max_predictions, inst.ids.size, inst.positions.size
    pad, pad_pred = b"\x00" * (seq - length), b"\x00" * (pred - k)
    return b"".join((
        encode_packed_entry("input_ids", "int32_list", encode_varints(inst.ids) + pad),
        encode_packed_entry("input_mask", "int32_list", b"\x01" * length + pad),
        encode_packed_entry("segment_ids", "int32_list",
                            b"\x00" * (2 + inst.la) + b"\x01" * (inst.lb + 1) + pad),
        encode_packed_entry("masked_lm_positions", "int32_list", encode_varints(inst.positions) + pad_pred),
        encode_packed_entry("masked_lm_ids", "int32_list", encode_varints(inst.originals) + pad_pred),
        encode_packed_entry("masked_lm_weights", "float_list", _F32_ONE * k + _F32_ZERO * (pred - k)),
        encode_packed_entry("next_sentence_labels", "int32_list", b"\x01" if inst.random_next else b"\x00"),
    ))


def _window_rng(seed: int, dupe_pass: int, window: int) -> tuple[random.Random, np.random.Generator]:
    """The generators of one window of one pass: a function of the seed and the data only."""
    return random.Random(f"{seed}/{dupe_pass}/{window}"), np.random.default_rng([seed, dupe_pass, window])


# --------------------------------------------------------------------------------------------------
# Worker processes: one pool reads and tokenises files, a second one makes instances.
# --------------------------------------------------------------------------------------------------

_STATE: tuple | None = None  # what the current worker process works with (set by an initializer)


def _init_tokenize_worker(vocab_file: str, lowercase: bool, input_format: str) -> None:
    global _STATE
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    _STATE = (load_tokenizer(vocab_file, lowercase), input_format)


def _tokenize_file(path: Path):
    tokenizer, input_format = _STATE
    return _tokenize_documents(parse_documents(read_text(path), input_format, str(path)), tokenizer)


def _init_instance_worker(state) -> None:
    global _STATE
    _STATE = state


def _run_task(task: tuple[int, list[int]]) -> tuple[list[bytes], np.ndarray, int]:
    """Encode the instances of some windows of one pass.

    Returns (payloads, stats int64[4] = [instances, tokens, masked positions, random next], sentences).
    """
    corpus, cfg, windows, seed = _STATE
    dupe_pass, window_ids = task
    payloads: list[bytes] = []
    stats = np.zeros(4, np.int64)
    sentences = 0
    for w in window_ids:
        doc, s0, s1 = windows[w]
        sentences += s1 - s0
        for inst in _window_instances(corpus, cfg, doc, s0, s1, _window_rng(seed, dupe_pass, w)):
            payloads.append(_payload(inst, cfg))
            stats += (1, inst.ids.size, inst.positions.size, inst.random_next)
    return payloads, stats, sentences


def _tasks(windows: list[tuple[int, int, int]], dupe_factor: int) -> list[tuple[int, list[int]]]:
    """Group consecutive windows into tasks of ~_TASK_SENTENCES sentences, for every pass."""
    groups, current, size = [], [], 0
    for w, (_, s0, s1) in enumerate(windows):
        current.append(w)
        size += s1 - s0
        if size >= _TASK_SENTENCES:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return [(p, g) for p in range(dupe_factor) for g in groups]


def _shuffled(items: Iterable[bytes], rng: np.random.Generator, capacity: int) -> Iterator[bytes]:
    """A seeded shuffle through a buffer of ``capacity`` items (a full shuffle if everything fits)."""
    buffer: list[bytes] = []
    for item in items:
        if len(buffer) < capacity:
            buffer.append(item)
            continue
        j = int(rng.integers(0, capacity))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def _pool(workers: int, initializer, initargs):
    """A process pool; fork shares memory for free, but is unsafe once OneFlow's threads run."""
    use_fork = "fork" in mp.get_all_start_methods() and "oneflow" not in sys.modules
    ctx = mp.get_context("fork" if use_fork else "spawn")
    # tokenizers warns in forked children once its thread pool was used; children that tokenise
    # set their own policy (see _init_tokenize_worker), the others never tokenise.
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return ctx.Pool(workers, initializer=initializer, initargs=initargs)
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

@dataclass
class PretrainingDataSummary:
    """What :func:`create_pretraining_data` made."""
    output_dir: Path
    files: list[Path]
    vocab_file: Path
    vocab_size: int
    seq_length: int
    max_predictions_per_seq: int
    data_part_num: int
    documents: int
    sentences: int
    instances: int
    tokens: int              # real (non-padding) tokens over all instances, [CLS]/[SEP] included
    masked_positions: int
    random_next: int         # instances with next_sentence_labels = 1
    seconds: float
    tokenize_seconds: float  # reading + WordPiece, part of ``seconds``
    settings: dict = field(default_factory=dict)

    @property
    def instances_per_second(self) -> float:
        return self.instances / max(self.seconds, 1e-9)

    def __str__(self) -> str:
        return (f"{self.instances:,} instances from {self.documents:,} documents "
                f"({self.sentences:,} sentences) in {self.seconds:.1f} s "
                f"({self.instances_per_second:,.0f} instances/s; reading + WordPiece "
                f"{self.tokenize_seconds:.1f} s): {self.tokens:,} tokens, "
                f"{self.masked_positions:,} masked positions "
                f"({self.masked_positions / max(self.tokens, 1):.1%}), "
                f"{self.random_next / max(self.instances, 1):.1%} random next; "
                f"{len(self.files)} parts in {self.output_dir}")


def _check_args(seq_length, max_predictions_per_seq, data_part_num, dupe_factor, masked_lm_prob,
                short_seq_prob, input_format="auto"):
    if seq_length < 8:
        raise ValueError(f"seq_length must be >= 8 (got {seq_length})")
    if not 1 <= max_predictions_per_seq <= seq_length - 3:
        raise ValueError(f"max_predictions_per_seq must be in [1, seq_length - 3] (got {max_predictions_per_seq})")
    if data_part_num < 1:
        raise ValueError(f"data_part_num must be >= 1 (got {data_part_num})")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor must be >= 1 (got {dupe_factor})")
    if not 0.0 < masked_lm_prob < 1.0:
        raise ValueError(f"masked_lm_prob must be in (0, 1) (got {masked_lm_prob})")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob must be in [0, 1] (got {short_seq_prob})")
    if input_format not in FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(FORMATS)} (got {input_format!r})")


def _check_corpus(corpus: _Corpus, sources: Sequence[str]) -> None:
    """Refuse corpora that would give no data, or data without real sentence pairs."""
    where = sources[0] if len(sources) == 1 else \
        f"{len(sources)} input files ({', '.join(sources[:2])}{' ...' if len(sources) > 2 else ''})"
    num_docs = len(corpus.doc_bounds) - 1
    if num_docs == 0:
        raise CorpusError(f"no text found in {where}: the corpus is empty")
    if num_docs < 2:
        raise CorpusError(
            f"{where}: only one document; next-sentence prediction needs random segments from other "
            "documents. Give more files, or separate documents with blank lines (one sentence per "
            "line, input format 'sentences')")
    if int(np.diff(corpus.doc_bounds).max()) < 2:
        raise CorpusError(
            f"{where}: every document is a single sentence, too short to make a sentence pair (every "
            "next-sentence label would be 'random'). Put one sentence per line with blank lines only "
            "between documents, or use input format 'paragraphs' for running text")


def make_instances(inputs, vocab_file: str | os.PathLike, seq_length: int = 128,
                   max_predictions_per_seq: int = 20, dupe_factor: int = 1,
                   masked_lm_prob: float = 0.15, short_seq_prob: float = 0.1,
                   whole_word_mask: bool = False, seed: int = 12345, input_format: str = "auto",
                   lowercase: bool = True, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """The instances :func:`create_pretraining_data` would write, made in this process, unshuffled.

    ``inputs``: files/directories, or a list of :class:`bertlib.corpus.Document`. For looking at
    data (notebooks, tests); ``limit`` stops after that many instances.
    """
    _check_args(seq_length, max_predictions_per_seq, 1, dupe_factor, masked_lm_prob, short_seq_prob,
                input_format)
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], Document):
        docs = inputs
    else:
        docs = read_corpus(inputs, input_format)
    vocab = read_vocab(vocab_file)
    corpus = _assemble([_tokenize_documents(docs, load_tokenizer(vocab_file, lowercase))])
    _check_corpus(corpus, sorted({d.source for d in docs}))
    cfg = _settings(vocab, seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob,
                    whole_word_mask)
    out: list[dict[str, np.ndarray]] = []
    for p in range(dupe_factor):
        for w, (doc, s0, s1) in enumerate(_windows(corpus)):
            for inst in _window_instances(corpus, cfg, doc, s0, s1, _window_rng(seed, p, w)):
                out.append(_features(inst, cfg))
                if limit is not None and len(out) >= limit:
                    return out
    return out


def create_pretraining_data(inputs, vocab_file: str | os.PathLike, output_dir: str | os.PathLike,
                            seq_length: int = 128, max_predictions_per_seq: int = 20,
                            data_part_num: int = 4, dupe_factor: int = 5,
                            masked_lm_prob: float = 0.15, short_seq_prob: float = 0.1,
                            whole_word_mask: bool = False, seed: int = 12345,
                            num_workers: int | None = None, progress: bool = True,
                            input_format: str = "auto", lowercase: bool = True) -> PretrainingDataSummary:
    """Make BERT pre-training OFRecords from text (see the module docstring for the algorithm).

    ``inputs``: a text file, a directory (its ``*.txt`` files) or a list of them; ``input_format``
    as in :mod:`bertlib.corpus`. Writes ``output_dir/part-0 .. part-{data_part_num-1}`` and
    ``output_dir/bertlib_data.json`` (settings and counts). ``num_workers`` processes (default: all
    cores) read, tokenise and make instances. Raises ``CorpusError`` for unusable text,
    ``VocabError`` for a bad vocab file, ``DataError`` if there are fewer instances than parts,
    ``ValueError`` for bad settings.
    """
    _check_args(seq_length, max_predictions_per_seq, data_part_num, dupe_factor, masked_lm_prob,
                short_seq_prob, input_format)
    from tqdm import tqdm  # plain text bars: no widget dependency in notebooks

    started = time.perf_counter()
    files = find_text_files(inputs)
    vocab = read_vocab(vocab_file)
    workers = max(1, num_workers if num_workers is not None else _default_workers())

    # 1. Read and WordPiece the files (one task per file).
    with tqdm(total=len(files), unit=" files", desc="reading + WordPiece", disable=not progress) as bar:
        if workers == 1 or len(files) == 1:
            tokenizer = load_tokenizer(vocab_file, lowercase)
            pieces = []
            for f in files:
                pieces.append(_tokenize_documents(parse_documents(read_text(f), input_format, str(f)), tokenizer))
                bar.update()
        else:
            with _pool(min(workers, len(files)), _init_tokenize_worker,
                       (str(vocab_file), lowercase, input_format)) as pool:
                pieces = []
                for piece in pool.imap(_tokenize_file, files):
                    pieces.append(piece)
                    bar.update()
    corpus = _assemble(pieces)
    del pieces
    _check_corpus(corpus, [str(f) for f in files])
    tokenize_seconds = time.perf_counter() - started

    # 2. Make, encode, shuffle and write instances (tasks of document windows, in a fixed order).
    cfg = _settings(vocab, seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob,
                    whole_word_mask)
    windows = _windows(corpus)
    tasks = _tasks(windows, dupe_factor)
    workers = min(workers, len(tasks))
    num_sentences = len(corpus.sent_bounds) - 1
    totals = np.zeros(4, np.int64)
    state = (corpus, cfg, windows, seed)
    bar = tqdm(total=num_sentences * dupe_factor, unit=" sentences", desc="making instances",
               disable=not progress, mininterval=0.5)

    def results() -> Iterator[tuple[list[bytes], np.ndarray, int]]:
        if workers == 1:
            _init_instance_worker(state)
            yield from map(_run_task, tasks)
            return
        with _pool(workers, _init_instance_worker, (state,)) as pool:
            yield from pool.imap(_run_task, tasks)  # in task order: the output does not depend on timing

    def payloads() -> Iterator[bytes]:
        for chunk, stats, sentences in results():
            totals[:] += stats
            bar.update(sentences)
            bar.set_postfix(instances=int(totals[0]), refresh=False)
            yield from chunk

    output_dir = Path(output_dir)
    try:
        shuffled = _shuffled(payloads(), np.random.default_rng([seed, 1 << 20]), _SHUFFLE_BUFFER)
        written = write_shards(shuffled, output_dir, data_part_num)
    finally:
        bar.close()
    settings = dict(seq_length=seq_length, max_predictions_per_seq=max_predictions_per_seq,
                    data_part_num=data_part_num, dupe_factor=dupe_factor, masked_lm_prob=masked_lm_prob,
                    short_seq_prob=short_seq_prob, whole_word_mask=whole_word_mask, seed=seed,
                    input_format=input_format, lowercase=lowercase)
    summary = PretrainingDataSummary(
        output_dir=output_dir, files=written, vocab_file=Path(vocab_file), vocab_size=len(vocab),
        seq_length=seq_length, max_predictions_per_seq=max_predictions_per_seq,
        data_part_num=data_part_num, documents=len(corpus.doc_bounds) - 1, sentences=num_sentences,
        instances=int(totals[0]), tokens=int(totals[1]), masked_positions=int(totals[2]),
        random_next=int(totals[3]), seconds=time.perf_counter() - started,
        tokenize_seconds=tokenize_seconds, settings=settings)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(summary).items()}
    meta["files"] = [p.name for p in written]
    meta["vocab_file"] = str(Path(vocab_file).resolve())
    meta["inputs"] = [str(f) for f in files[:1000]]
    (output_dir / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return summary


def render_instance(features: Mapping[str, np.ndarray], vocab: Sequence[str], width: int = 100) -> str:
    """A human-readable view of one record: the two segments, and each masked position with what
    it held and how it was corrupted (``[MASK]``, a random token, or kept)."""
    ids = np.asarray(features["input_ids"])
    length = int(np.asarray(features["input_mask"]).sum())
    segments = np.asarray(features["segment_ids"])
    weights = np.asarray(features["masked_lm_weights"])
    k = int((weights > 0).sum())
    positions = np.asarray(features["masked_lm_positions"])[:k]
    originals = np.asarray(features["masked_lm_ids"])[:k]
    target = dict(zip(positions.tolist(), originals.tolist()))
    mask_token = "[MASK]"

    def show(i: int) -> str:
        token = vocab[ids[i]]
        if i in target:
            return f"{token}<-{vocab[target[i]]}" if token != vocab[target[i]] else f"{token}<-(kept)"
        return token

    def wrap(words: list[str], indent: str) -> str:
        lines, line = [], indent
        for w in words:
            if len(line) + len(w) + 1 > width and line.strip():
                lines.append(line)
                line = indent
            line += ("" if line == indent else " ") + w
        lines.append(line)
        return "\n".join(lines)

    a = [show(i) for i in range(length) if segments[i] == 0]
    b = [show(i) for i in range(length) if segments[i] == 1]
    label = int(np.asarray(features["next_sentence_labels"]).ravel()[0])
    kinds = []
    for p, o in zip(positions.tolist(), originals.tolist()):
        now = vocab[ids[p]]
        how = "[MASK]" if now == mask_token else ("kept" if ids[p] == o else f"random {now!r}")
        kinds.append(f"{p}:{vocab[o]!r}->{how}")
    return "\n".join([
        f"length {length} of {ids.size}; next_sentence_label {label} "
        f"({'B is a random segment' if label else 'B follows A'})",
        "segment A (segment_ids 0):", wrap(a, "  "),
        "segment B (segment_ids 1):", wrap(b, "  "),
        f"{k} masked positions (position:original->now):", wrap(kinds, "  "),
    ])
