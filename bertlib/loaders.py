"""Batches for training, read by OneFlow's own ``OFRecordReader`` + ``OFRecordRawDecoder``.

The reader does the file I/O and shuffling in C++; each decoder pulls one feature out of the
batch of serialized records and casts it to the dtype asked for. The loaders here add what the
bare reader lacks:

* **checks first**: the reader aborts the whole process (SIGABRT) on a missing, empty, truncated
  or corrupt part, and OneFlow silently returns zeros for an out-of-range embedding id. So the
  data directory goes through :func:`bertlib.ofrecord.validate_data_dir` before the reader
  opens it: every part is framing-checked and this rank's parts are fully decoded (features,
  lengths, token ids < vocab size, labels and positions in range). Bad data is a Python
  ``DataError`` naming the file, record and byte offset.
* **ranks**: under ``python -m oneflow.distributed.launch`` each process builds its own (local)
  reader, and OneFlow gives rank ``r`` of ``W`` a contiguous block of the parts
  (:func:`bertlib.ofrecord.rank_part_ranges`): ranks read disjoint data with no configuration.
  ``data_part_num`` must be >= ``W``.
* **epochs**: the reader cycles forever. ``steps_per_epoch`` is the number of batches in which
  the rank with the fewest records sees all of them (= records / (batch_size x world size) for
  balanced parts), and ``epoch`` counts the batches drawn so far in those units. With
  ``shuffle=True`` records pass through a shuffle buffer (``shuffle_buffer_size`` records) that
  spans epoch boundaries, so an "epoch" is approximate: a record can repeat before every record was
  seen once. The order of part files is reshuffled after each pass as well.

Batches are dicts of OneFlow tensors on ``device``. Integer features come back as **int64**
``[batch_size, length]`` (what ``nn.Embedding`` and cross-entropy want; ``int_dtype`` changes
it), float features as float32 ``[batch_size, length]``. Length-1 features keep their axis:
``next_sentence_labels`` is int64 ``[batch_size, 1]``.

:func:`iter_numpy_batches` reads the same files in pure Python (no OneFlow) for inspection and tests.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import runtime
from .ofrecord import (DataError, Schema, ValidationSummary, iter_records, part_paths,
                       rank_part_ranges, validate_data_dir)
from .pretraining_data import METADATA_FILE
from .schemas import RecordSchema, pretraining_schema, squad_schema

__all__ = ["OFRecordLoader", "PretrainingLoader", "SquadLoader", "iter_numpy_batches", "count_parts"]


def count_parts(data_dir: str | os.PathLike, prefix: str = "part-", suffix_length: int | None = None) -> int:
    """How many consecutive part files ``prefix0, prefix1, ...`` a directory holds."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist")
    n = 0
    while part_paths(data_dir, n + 1, prefix, suffix_length)[-1].is_file():
        n += 1
    if n == 0:
        raise DataError(f"data directory {data_dir} has no {part_paths(data_dir, 1, prefix, suffix_length)[0].name} "
                        f"(is it an OFRecord directory? zero-padded names need suffix_length)")
    return n


def _metadata(data_dir: Path) -> dict:
    try:
        return json.loads((data_dir / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class OFRecordLoader:
    """Endless batches of the features in ``schema`` from ``data_dir`` (see the module docstring).

    Args:
        data_dir: directory of ``part-*`` OFRecord files.
        batch_size: records per batch on this rank.
        schema: ``name -> (dtype, length)``; every record must hold these features. A
            :class:`bertlib.schemas.RecordSchema` also brings its id features and value ranges.
        data_part_num: number of part files (None: count them).
        shuffle: shuffle buffer + part order reshuffled each pass; False reads parts in order.
        seed: the reader's random seed (same seed, same order).
        device: where the tensors go ("cpu", "cuda", "cuda:0", ...).
        validate: check the data first (recommended; see the module docstring). With False only
            the framing of each part is checked (still needed to count records).
        vocab_size: token ids in ``id_features`` must be below it.
        id_features: features holding token ids (None: the schema's, else ``input_ids``).
        value_ranges: more ``name -> (low, high)`` bounds for validation (added to the schema's).
        int_dtype: OneFlow dtype for integer features (default ``flow.int64``).
    """

    def __init__(self, data_dir: str | os.PathLike, batch_size: int, schema: Mapping[str, tuple],
                 data_part_num: int | None = None, *, shuffle: bool = True, seed: int = 12345,
                 device: str = "cpu", validate: bool = True, vocab_size: int | None = None,
                 id_features: Sequence[str] | None = None,
                 value_ranges: Mapping[str, tuple[float, float]] | None = None,
                 prefix: str = "part-", suffix_length: int | None = None,
                 shuffle_buffer_size: int = 1024, int_dtype=None):
        flow = runtime.import_oneflow()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.data_dir = Path(data_dir)
        self.schema = schema if isinstance(schema, Schema) else Schema(schema)
        if isinstance(schema, RecordSchema):
            id_features = schema.id_features if id_features is None else id_features
            value_ranges = {**schema.value_ranges, **(value_ranges or {})}
        id_features = ("input_ids",) if id_features is None else id_features
        self.batch_size, self.shuffle, self.seed, self.device = batch_size, shuffle, seed, device
        self.world_size, self.rank = runtime.world_size(), runtime.rank()
        if data_part_num is None:
            data_part_num = count_parts(self.data_dir, prefix, suffix_length)
        self.data_part_num = data_part_num
        if self.world_size > data_part_num:
            # validate_data_dir says the same; say it even with validate=False.
            validate_data_dir(self.data_dir, self.schema, data_part_num, num_ranks=self.world_size,
                              prefix=prefix, suffix_length=suffix_length)
        self.parts = rank_part_ranges(data_part_num, self.world_size)[self.rank]
        self.summary: ValidationSummary = validate_data_dir(
            self.data_dir, self.schema, data_part_num, num_ranks=self.world_size, vocab_size=vocab_size,
            id_features=id_features, prefix=prefix, suffix_length=suffix_length,
            value_ranges=value_ranges, decode_parts=self.parts if validate else ())
        self.num_records = self.summary.records_per_rank[self.rank]
        self.steps_per_epoch = max(1, min(self.summary.records_per_rank) // batch_size)
        self.batches_drawn = 0

        self._reader = flow.nn.OFRecordReader(
            str(self.data_dir), batch_size=batch_size, data_part_num=data_part_num,
            part_name_prefix=prefix, part_name_suffix_length=suffix_length if suffix_length else -1,
            random_shuffle=shuffle, shuffle_buffer_size=shuffle_buffer_size,
            shuffle_after_epoch=shuffle, random_seed=seed)
        int_dtype = int_dtype if int_dtype is not None else flow.int64
        self._decoders = {
            name: flow.nn.OFRecordRawDecoder(
                name, [length], dtype=flow.float32 if dtype.kind == "f" else int_dtype)
            for name, (dtype, length) in self.schema.items()}

    @property
    def epoch(self) -> float:
        """Batches drawn so far, in epochs (see the module docstring)."""
        return self.batches_drawn / self.steps_per_epoch

    def next_batch(self) -> dict:
        """One batch: ``name -> tensor [batch_size, length]`` on ``device``."""
        records = self._reader()
        batch = {name: decoder(records) for name, decoder in self._decoders.items()}
        if self.device != "cpu":
            batch = {name: t.to(self.device) for name, t in batch.items()}
        self.batches_drawn += 1
        return batch

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next_batch()

    def batches(self, n: int) -> Iterator[dict]:
        """Exactly ``n`` batches."""
        for _ in range(n):
            yield self.next_batch()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.data_dir}, batch_size={self.batch_size}, rank {self.rank}/"
                f"{self.world_size} reads parts {self.parts.start}..{self.parts.stop - 1} "
                f"({self.num_records} records), {self.steps_per_epoch} batches per epoch, "
                f"shuffle={self.shuffle})")


class PretrainingLoader(OFRecordLoader):
    """BERT pre-training batches: the seven features of :func:`bertlib.schemas.pretraining_schema`.

    ``input_ids``, ``input_mask``, ``segment_ids``: int64 [B, seq_length];
    ``masked_lm_positions``, ``masked_lm_ids``: int64 [B, max_predictions_per_seq];
    ``masked_lm_weights``: float32 [B, max_predictions_per_seq]; ``next_sentence_labels``: int64 [B, 1].

    ``vocab_size`` (the model's) bounds ``input_ids`` and ``masked_lm_ids``; if None, the vocab
    size recorded in the data directory's ``bertlib_data.json`` is used when there is one.
    """

    def __init__(self, data_dir: str | os.PathLike, batch_size: int, seq_length: int = 128,
                 max_predictions_per_seq: int = 20, data_part_num: int | None = None, *,
                 shuffle: bool = True, seed: int = 12345, device: str = "cpu", validate: bool = True,
                 vocab_size: int | None = None, **kwargs):
        if vocab_size is None:
            vocab_size = _metadata(Path(data_dir)).get("vocab_size")
        super().__init__(data_dir, batch_size, pretraining_schema(seq_length, max_predictions_per_seq),
                         data_part_num, shuffle=shuffle, seed=seed, device=device, validate=validate,
                         vocab_size=vocab_size, **kwargs)


class SquadLoader(OFRecordLoader):
    """SQuAD batches: ``input_ids``, ``input_mask``, ``segment_ids`` int64 [B, seq_length] plus
    ``start_positions``, ``end_positions`` int64 [B, 1] (training) or ``unique_ids`` int64 [B, 1] (eval).

    Evaluation reads in order (``shuffle`` defaults to ``is_training``); the reader still cycles,
    so the last of ``ceil(num_records / batch_size)`` batches wraps around to the first records:
    match logits to features by ``unique_ids`` and ignore repeats.
    """

    def __init__(self, data_dir: str | os.PathLike, batch_size: int, seq_length: int = 384,
                 is_training: bool = True, data_part_num: int | None = None, *,
                 shuffle: bool | None = None, seed: int = 12345, device: str = "cpu",
                 validate: bool = True, vocab_size: int | None = None, **kwargs):
        self.is_training = is_training
        super().__init__(data_dir, batch_size, squad_schema(seq_length, is_training), data_part_num,
                         shuffle=is_training if shuffle is None else shuffle, seed=seed, device=device,
                         validate=validate, vocab_size=vocab_size, **kwargs)


def iter_numpy_batches(data_dir: str | os.PathLike, batch_size: int,
                       schema: Mapping[str, tuple] | None = None, data_part_num: int | None = None,
                       prefix: str = "part-", suffix_length: int | None = None,
                       drop_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Batches of NumPy arrays ``[batch_size, length]`` read in pure Python, parts in order, once.

    With a ``schema`` each feature is cast to its dtype (and missing ones raise DataError);
    without, every feature is returned with its stored dtype. No shuffling, no OneFlow.
    """
    if data_part_num is None:
        data_part_num = count_parts(data_dir, prefix, suffix_length)
    schema = Schema(schema) if schema is not None else None
    batch: list[dict] = []

    def stack(records: list[dict]) -> dict[str, np.ndarray]:
        names = schema.keys() if schema is not None else records[0].keys()
        out = {}
        for name in names:
            try:
                column = [r[name] for r in records]
            except KeyError:
                raise DataError(f"{data_dir}: a record lacks feature {name!r}") from None
            out[name] = np.stack(column).astype(schema[name][0]) if schema is not None else np.stack(column)
        return out

    for path in part_paths(data_dir, data_part_num, prefix, suffix_length):
        for record in iter_records(path):
            batch.append(record)
            if len(batch) == batch_size:
                yield stack(batch)
                batch = []
    if batch and not drop_last:
        yield stack(batch)
