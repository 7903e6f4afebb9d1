"""bertlib.summary: component breakdown, shape tracing with forward hooks, building without init."""
from __future__ import annotations

import numpy as np
import pytest

from bertlib.config import BertConfig
from bertlib.model import BertForPreTraining, BertForQuestionAnswering, flow
from bertlib.summary import COMPONENTS, build, component, count_parameters, parameter_breakdown, trace_shapes


@pytest.fixture(scope="module")
def tiny():
    config = BertConfig.tiny(vocab_size=300, num_hidden_layers=2)
    return config, BertForPreTraining(config).eval()


def test_every_parameter_has_one_component_and_the_breakdown_adds_up(tiny):
    config, model = tiny
    breakdown = parameter_breakdown(model)
    assert list(breakdown) == list(COMPONENTS)
    assert sum(breakdown.values()) == count_parameters(model)
    H, V = config.hidden_size, config.vocab_size
    # one LayerNorm in the embeddings, two per layer, one in the MLM transform
    assert breakdown["LayerNorm"] == (1 + 2 * config.num_hidden_layers + 1) * 2 * H
    assert breakdown["MLM head"] == H * H + H + V            # the decoder matrix is the word embeddings
    assert breakdown["NSP head"] == 2 * H + 2 and breakdown["QA head"] == 0


def test_qa_model_breakdown_has_no_pooler():
    model = build(BertForQuestionAnswering, BertConfig.tiny(vocab_size=100), init=False)
    breakdown = parameter_breakdown(model)
    assert breakdown["pooler"] == 0 and breakdown["QA head"] > 0 and breakdown["MLM head"] == 0


def test_unknown_parameter_name_raises():
    with pytest.raises(ValueError, match="no known BERT component"):
        component("decoder.layers.0.weight")


def test_build_without_init_restores_the_initialisers():
    config = BertConfig.tiny(vocab_size=100)
    build(BertForPreTraining, config, init=False)
    fresh = BertForPreTraining(config)  # must be randomly initialised again afterwards
    w = fresh.bert.encoder.layer[0].attention.self.query.weight.numpy()
    assert w.std() > 0.5 * config.initializer_range
    linear = flow.nn.Linear(4, 4)
    assert np.abs(linear.weight.numpy()).sum() > 0


def test_trace_shapes_records_every_stage_and_removes_its_hooks(tiny):
    config, model = tiny
    B, S, P = 2, 7, 3
    names = ["bert.embeddings", "bert.encoder.layer.0", "bert.pooler", "cls.predictions"]
    ids = flow.ones(B, S, dtype=flow.int64)
    positions = flow.zeros(B, P, dtype=flow.int64)
    with trace_shapes(model, names) as shapes:
        model(ids, masked_lm_positions=positions)
    H, V = config.hidden_size, config.vocab_size
    assert shapes["bert.embeddings"] == (B, S, H)
    assert shapes["bert.pooler"] == (B, H)
    assert shapes["cls.predictions"] == (B, P, V)
    first = shapes["bert.encoder.layer.0"]
    assert (first[0] if isinstance(first[0], tuple) else first) == (B, S, H)
    modules = dict(model.named_modules())
    assert all(len(modules[n]._forward_hooks) == 0 for n in names)


def test_trace_shapes_unknown_module(tiny):
    _, model = tiny
    with pytest.raises(KeyError, match="bert.nowhere"):
        with trace_shapes(model, ["bert.nowhere"]):
            pass
