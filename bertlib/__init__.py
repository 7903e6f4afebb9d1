"""bertlib: BERT pre-training and SQuAD fine-tuning on OneFlow 0.9.

The public API, imported lazily so that ``import bertlib`` (and the tools that need no model, such
as the SQuAD scorer) do not pay for importing OneFlow::

    from bertlib import BertConfig, BertForPreTraining, pretraining_loss

Whole runs (what ``bert-pretrain`` and ``bert-squad`` do, in-process or on N processes) are in
:mod:`bertlib.tasks`: ``bertlib.tasks.pretraining.run(PretrainingOptions(...))``.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BertConfig": "config",
    "BertModel": "model",
    "BertForPreTraining": "model",
    "BertForQuestionAnswering": "model",
    "pretraining_loss": "model",
    "squad_loss": "model",
    "Trainer": "trainer",
    "TrainOptions": "trainer",
    "import_oneflow": "runtime",
    "PretrainingOptions": "tasks.pretraining",
    "SquadOptions": "tasks.squad",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'bertlib' has no attribute {name!r}")
