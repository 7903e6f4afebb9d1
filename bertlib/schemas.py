"""The record layouts of bertlib's OFRecord data, each with the values its features may hold.

One home for them: the data writers (:mod:`bertlib.pretraining_data`, :mod:`bertlib.squad.features`),
the loaders, ``bert-validate-data`` and the SQuAD task all read these. The feature names are those
of Google's BERT scripts, which OneFlow-Benchmark's run_pretraining.py and run_squad.py read too.

Pre-training (``S = seq_length``, ``P = max_predictions_per_seq``)::

    input_ids int32[S], input_mask int32[S], segment_ids int32[S],
    masked_lm_positions int32[P], masked_lm_ids int32[P], masked_lm_weights float32[P],
    next_sentence_labels int32[1]

SQuAD: ``input_ids``, ``input_mask``, ``segment_ids`` int32[S], then ``start_positions`` and
``end_positions`` int32[1] (training) or ``unique_ids`` int32[1] (evaluation).

Why the ranges matter: OneFlow returns silent zeros for an out-of-range embedding id and a finite,
wrong loss for an out-of-range label, so the validator checks them before any reader opens a file.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from .ofrecord import Schema, ValidationSummary, validate_data_dir

__all__ = ["RecordSchema", "pretraining_schema", "squad_schema", "squad_train_schema",
           "squad_eval_schema", "SCHEMA_NAMES", "schema_by_name"]


class RecordSchema(Schema):
    """A :class:`~bertlib.ofrecord.Schema` (``name -> (dtype, length)``) plus what its values may be.

    ``id_features`` hold token ids, checked against the vocabulary size of the run;
    ``value_ranges`` bound the other features (``name -> (low, high)``, high excluded).
    """

    def __init__(self, fields: Mapping[str, tuple], id_features=("input_ids",),
                 value_ranges: Mapping[str, tuple] | None = None):
        super().__init__(fields)
        self.id_features = tuple(id_features)
        self.value_ranges = dict(value_ranges or {})

    def validate(self, data_dir: str | os.PathLike, data_part_num: int, num_ranks: int = 1,
                 vocab_size: int | None = None, **kwargs) -> ValidationSummary:
        """:func:`bertlib.ofrecord.validate_data_dir` with this schema's ids and ranges."""
        return validate_data_dir(data_dir, self, data_part_num, num_ranks=num_ranks,
                                 vocab_size=vocab_size, id_features=self.id_features,
                                 value_ranges=self.value_ranges, **kwargs)


def _binary(*names) -> dict:
    return {name: (0, 2) for name in names}


def pretraining_schema(seq_length: int = 128, max_predictions_per_seq: int = 20) -> RecordSchema:
    """A pre-training record: a sentence pair, its masked positions and the next-sentence label."""
    S, P = seq_length, max_predictions_per_seq
    return RecordSchema(
        {"input_ids": (np.int32, S), "input_mask": (np.int32, S), "segment_ids": (np.int32, S),
         "masked_lm_positions": (np.int32, P), "masked_lm_ids": (np.int32, P),
         "masked_lm_weights": (np.float32, P), "next_sentence_labels": (np.int32, 1)},
        id_features=("input_ids", "masked_lm_ids"),
        value_ranges={"masked_lm_positions": (0, S),
                      **_binary("segment_ids", "input_mask", "next_sentence_labels")})


def squad_schema(seq_length: int = 384, is_training: bool = True) -> RecordSchema:
    """A SQuAD window: training records carry the answer's token span, eval records a unique id."""
    S = seq_length
    fields = {"input_ids": (np.int32, S), "input_mask": (np.int32, S), "segment_ids": (np.int32, S)}
    ranges = _binary("segment_ids", "input_mask")
    if is_training:
        # position 0 ([CLS]) labels a window that does not contain the answer
        fields.update(start_positions=(np.int32, 1), end_positions=(np.int32, 1))
        ranges.update(start_positions=(0, S), end_positions=(0, S))
    else:
        fields["unique_ids"] = (np.int32, 1)
    return RecordSchema(fields, id_features=("input_ids",), value_ranges=ranges)


def squad_train_schema(seq_length: int = 384) -> RecordSchema:
    return squad_schema(seq_length, is_training=True)


def squad_eval_schema(seq_length: int = 384) -> RecordSchema:
    return squad_schema(seq_length, is_training=False)


SCHEMA_NAMES = ("pretraining", "squad-train", "squad-eval")


def schema_by_name(name: str, seq_length: int, max_predictions_per_seq: int = 20) -> RecordSchema:
    """The schema ``bert-validate-data --schema NAME`` means."""
    if name == "pretraining":
        return pretraining_schema(seq_length, max_predictions_per_seq)
    if name in ("squad-train", "squad-eval"):
        return squad_schema(seq_length, is_training=name == "squad-train")
    raise ValueError(f"unknown schema {name!r}; one of {', '.join(SCHEMA_NAMES)}")
