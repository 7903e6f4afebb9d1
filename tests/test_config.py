"""BertConfig: presets, parameter counts of live models, config.json round trips, OneFlow-Benchmark's CLI flags."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bertlib.config import BertConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf_reference"


def closed_form_count(c: BertConfig, pooler=True, mlm=False, nsp=False, qa=False) -> int:
    """Parameters of BERT written out block by block from the paper's description (a second,
    independent derivation of what the live modules hold)."""
    H, I, V = c.hidden_size, c.intermediate_size, c.vocab_size
    embeddings = (V + c.max_position_embeddings + c.type_vocab_size) * H + 2 * H   # tables + LayerNorm
    attention = 4 * (H * H + H) + 2 * H          # Q, K, V, output projection; LayerNorm
    feed_forward = (H * I + I) + (I * H + H) + 2 * H
    total = embeddings + c.num_hidden_layers * (attention + feed_forward)
    total += (H * H + H) if pooler else 0
    total += (H * H + H + 2 * H + V) if mlm else 0   # transform + LayerNorm + output bias (decoder tied)
    total += (2 * H + 2) if nsp else 0
    total += (2 * H + 2) if qa else 0
    return total


@pytest.fixture(scope="module")
def hf_counts():
    return json.loads((FIXTURES / "metadata.json").read_text())["parameter_counts"]


@pytest.mark.parametrize("preset", ["base", "large"])
def test_preset_parameter_counts_match_transformers(preset, hf_counts):
    from bertlib.model import BertForPreTraining, BertForQuestionAnswering, BertModel
    from bertlib.summary import build, count_parameters

    config = BertConfig.preset(preset)
    for cls, kwargs in ((BertModel, dict(pooler=True)),
                        (BertForPreTraining, dict(pooler=True, mlm=True, nsp=True)),
                        (BertForQuestionAnswering, dict(pooler=False, qa=True))):
        model = build(cls, config, init=False)  # shapes only: 336M random numbers would take ~40 s
        live = count_parameters(model)
        del model
        assert live == closed_form_count(config, **kwargs), cls.__name__
        assert live == hf_counts[preset][cls.__name__], cls.__name__


def test_preset_sizes_are_the_papers(hf_counts):
    base, large = hf_counts["base"]["BertForPreTraining"], hf_counts["large"]["BertForPreTraining"]
    assert 109e6 < base < 111e6           # OneFlow-Benchmark's README: "110M"
    assert 334e6 < large < 341e6          # the README's "330M", the paper's "340M" (see notebook 01)
    b, l = BertConfig.base(), BertConfig.large()
    assert (b.num_hidden_layers, b.hidden_size, b.num_attention_heads, b.intermediate_size) == (12, 768, 12, 4 * 768)
    assert (l.num_hidden_layers, l.hidden_size, l.num_attention_heads, l.intermediate_size) == (24, 1024, 16, 4 * 1024)
    for c in (b, l):
        assert c.max_position_embeddings == 512 and c.vocab_size == 30522 and c.type_vocab_size == 2
        assert c.layer_norm_eps == 1e-12 and c.initializer_range == 0.02


def test_tiny_model_live_count_matches_closed_form_with_real_init():
    from bertlib.model import BertForPreTraining
    from bertlib.summary import build, count_parameters

    config = BertConfig.tiny(vocab_size=1000)
    initialised = BertForPreTraining(config)
    skeleton = build(BertForPreTraining, config, init=False)
    assert count_parameters(initialised) == closed_form_count(config, mlm=True, nsp=True)
    assert ({n: tuple(p.shape) for n, p in initialised.named_parameters()}
            == {n: tuple(p.shape) for n, p in skeleton.named_parameters()})


def test_preset_overrides_and_unknown_preset():
    assert BertConfig.base(vocab_size=1000).vocab_size == 1000
    assert BertConfig.preset("tiny") == BertConfig.tiny()
    with pytest.raises(ValueError, match="unknown preset"):
        BertConfig.preset("huge")


def test_json_round_trip_uses_hugging_face_keys(tmp_path):
    config = BertConfig.large(vocab_size=28996, hidden_dropout_prob=0.2, layer_norm_eps=1e-5)
    path = tmp_path / "config.json"
    config.to_json(path)
    data = json.loads(path.read_text())
    assert data["model_type"] == "bert"
    for f in dataclasses.fields(BertConfig):
        assert data[f.name] == getattr(config, f.name), f.name
    assert BertConfig.from_json(path) == config
    assert BertConfig.from_json(tmp_path) == config            # a directory holding config.json
    assert BertConfig.from_json(config.to_json()) == config    # a JSON string


def test_from_json_reads_a_transformers_config_and_ignores_extra_keys():
    # written by transformers itself (tools/make_hf_reference.py)
    path = FIXTURES / "pretraining" / "config.json"
    data = json.loads(path.read_text())
    config = BertConfig.from_json(path)
    assert "transformers_version" in data and "pad_token_id" in data
    for f in dataclasses.fields(BertConfig):
        assert getattr(config, f.name) == data[f.name], f.name


def test_from_json_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertConfig.from_json(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertConfig.from_json(tmp_path / "config.json")


def test_gelu_python_is_gelu():
    assert BertConfig.from_dict({"hidden_act": "gelu_python"}).hidden_act == "gelu"


def test_from_seed_flags_hidden_is_heads_times_per_head():
    c = BertConfig.from_seed_flags(num_hidden_layers=12, num_attention_heads=12, hidden_size_per_head=64)
    assert c.hidden_size == 12 * 64 and c.intermediate_size == 4 * 12 * 64
    assert c.head_size == 64
    base = BertConfig.base()
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        base.hidden_size, base.num_hidden_layers, base.num_attention_heads, base.intermediate_size)
    c = BertConfig.from_seed_flags(24, 16, 64, vocab_size=100)
    assert (c.hidden_size, c.vocab_size) == (1024, 100)


@pytest.mark.parametrize("hidden, heads", [(100, 12), (768, 7), (32, 64)])
def test_hidden_not_divisible_by_heads_raises(hidden, heads):
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        BertConfig(hidden_size=hidden, num_attention_heads=heads)


def test_unsupported_activation_raises():
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig(hidden_act="swish")
