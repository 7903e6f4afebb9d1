"""bertlib's BERT against Hugging Face transformers, plus checkpoint I/O and train/eval behaviour.

The reference numbers come from tests/fixtures/hf_reference/, written by tools/make_hf_reference.py
in a separate torch + transformers interpreter. Nothing here is typed by hand.

Padding: transformers masks padded keys with finfo(float32).min, bertlib with -10000. Both give those
keys a probability of exactly 0 after the softmax in float32, and padded QUERY rows still attend to
the real keys in both, so every position (padded ones included) is compared.

The parity tests run on both paths of the model: ``kernels="reference"`` (plain OneFlow modules) and
``kernels="fast"`` (bertlib.fast swapped in; on a CPU that is what the default "auto" does).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from bertlib.model import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertModel,
    flow,
    pretraining_loss,
    squad_loss,
)

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "tools" / "make_hf_reference.py"
FIXTURES = REPO / "tests" / "fixtures" / "hf_reference"
ATOL = 1e-4
KERNELS = ["reference", "fast"]


def _load_generator():
    """The generator module itself (its top level imports no torch), so both sides share one layout."""
    spec = importlib.util.spec_from_file_location("make_hf_reference", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(variant: str) -> dict:
    with np.load(FIXTURES / variant / "reference.npz") as data:
        return {k: data[k] for k in data.files}


def as_flow(array):
    return flow.tensor(np.ascontiguousarray(array))


def run_inputs(ref):
    return as_flow(ref["input_ids"]), as_flow(ref["token_type_ids"]), as_flow(ref["attention_mask"])


def max_diff(ours, theirs) -> float:
    ours = ours.numpy() if hasattr(ours, "numpy") else np.asarray(ours)
    assert ours.shape == np.shape(theirs), f"shape {ours.shape} vs reference {np.shape(theirs)}"
    return float(np.abs(ours - theirs).max())


def load_quietly(cls, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint must load without any warning
        return cls.from_pretrained(path, **kwargs)


@pytest.fixture(scope="module", params=KERNELS)
def kernels(request):
    return request.param


@pytest.fixture(scope="module")
def pretraining(kernels):
    model = load_quietly(BertForPreTraining, FIXTURES / "pretraining", kernels=kernels)
    return model.eval(), reference("pretraining")


@pytest.fixture(scope="module")
def qa(kernels):
    return load_quietly(BertForQuestionAnswering, FIXTURES / "qa", kernels=kernels).eval(), reference("qa")


# ------------------------------------------------------------------------------- the fixture itself
def test_fixture_was_written_by_the_committed_generator():
    gen = _load_generator()
    assert gen.FIXTURE_DIR == FIXTURES
    meta = json.loads((FIXTURES / gen.METADATA_NAME).read_text())
    assert meta["generator"] == GENERATOR.relative_to(REPO).as_posix()
    # A generator edited after the fixture was made means the fixture may not be what it says.
    assert meta["generator_sha256"] == hashlib.sha256(GENERATOR.read_bytes()).hexdigest(), (
        "tools/make_hf_reference.py changed since the fixture was generated: rerun it (see its docstring)")
    assert meta["torch"] and meta["transformers"]
    assert sorted(meta["variants"]) == sorted(gen.VARIANTS)
    for variant in gen.VARIANTS:
        d = FIXTURES / variant
        listed = meta["variants"][variant]["files"]
        assert sorted(p.name for p in d.iterdir()) == listed
        assert {"config.json", "model.safetensors", gen.REFERENCE_NAME} <= set(listed)
        config = json.loads((d / "config.json").read_text())
        assert config["transformers_version"] == meta["transformers"]
        arrays = reference(variant)
        described = meta["variants"][variant]["arrays"]
        assert sorted(arrays) == sorted(described)
        for name, (dtype, shape) in described.items():
            assert (str(arrays[name].dtype), list(arrays[name].shape)) == (dtype, shape), name
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 2_000_000, f"fixture is {total} bytes; keep it under 2 MB"


def test_fixture_inputs_have_padding_and_both_segments():
    for variant in ("pretraining", "qa", "bare"):
        ref = reference(variant)
        mask = ref["attention_mask"]
        assert (mask == 0).any() and (mask == 1).all(axis=1).any(), "need padded and unpadded rows"
        # padding only at the end of a row
        assert all((np.diff(row) <= 0).all() for row in mask)
        assert set(np.unique(ref["token_type_ids"])) == {0, 1}


# -------------------------------------------------------------------------------------- parity
def test_pretraining_logits_match_transformers(pretraining):
    model, ref = pretraining
    with flow.no_grad():
        out = model(*run_inputs(ref))
    assert max_diff(out.prediction_logits, ref["prediction_logits"]) <= ATOL
    assert max_diff(out.seq_relationship_logits, ref["seq_relationship_logits"]) <= ATOL


def test_pretraining_loss_matches_reference_definition(pretraining):
    model, ref = pretraining
    with flow.no_grad():
        out = model(*run_inputs(ref), masked_lm_positions=as_flow(ref["masked_lm_positions"]))
        total, mlm, nsp = pretraining_loss(
            out.prediction_logits, out.seq_relationship_logits, as_flow(ref["masked_lm_ids"]),
            as_flow(ref["masked_lm_weights"]), as_flow(ref["next_sentence_labels"]),
            kernels=model.config.kernels)
    assert max_diff(out.prediction_logits, ref["mlm_logits_at_positions"]) <= ATOL
    assert abs(mlm.item() - float(ref["mlm_loss"])) <= ATOL
    assert abs(nsp.item() - float(ref["nsp_loss"])) <= ATOL
    assert abs(total.item() - float(ref["total_loss"])) <= ATOL
    # The weights matter: the reference has zero-weight padding slots, which a plain mean would count.
    assert (ref["masked_lm_weights"] == 0).any()


def test_masked_positions_equal_gathered_full_logits(pretraining):
    model, ref = pretraining
    positions = ref["masked_lm_positions"]                                      # int64 [B, P]
    with flow.no_grad():
        full = model(*run_inputs(ref)).prediction_logits.numpy()               # [B, S, V]
        at = model(*run_inputs(ref), masked_lm_positions=as_flow(positions)).prediction_logits.numpy()
    gathered = np.take_along_axis(full, positions[:, :, None], axis=1)         # [B, P, V]
    assert at.shape == gathered.shape
    assert np.abs(at - gathered).max() <= 1e-5


def test_question_answering_matches_transformers(qa):
    model, ref = qa
    with flow.no_grad():
        out = model(*run_inputs(ref))
        loss = squad_loss(out.start_logits, out.end_logits, as_flow(ref["start_positions"]),
                          as_flow(ref["end_positions"]), kernels=model.config.kernels)
    assert max_diff(out.start_logits, ref["start_logits"]) <= ATOL
    assert max_diff(out.end_logits, ref["end_logits"]) <= ATOL
    assert abs(loss.item() - float(ref["squad_loss"])) <= ATOL


def test_question_answering_in_cut_batches_matches_transformers(qa):
    """bertlib.squad.logits.qa_logits (windows sorted by length, batches cut to their longest,
    one window per batch here) gives transformers' logits at every real token, -inf at padding."""
    from bertlib.squad.logits import qa_logits

    model, ref = qa
    mask = ref["attention_mask"]
    assert (mask == 0).any(), "the fixture must have padding for this test to mean anything"
    windows = [{"input_ids": i, "segment_ids": t, "input_mask": m}
               for i, t, m in zip(ref["input_ids"], ref["token_type_ids"], mask)]
    starts, ends = qa_logits(model, windows, batch_size=1)
    for ours, theirs in ((starts, ref["start_logits"]), (ends, ref["end_logits"])):
        assert ours.shape == theirs.shape
        assert np.abs(ours[mask == 1] - theirs[mask == 1]).max() <= ATOL
        assert np.isneginf(ours[mask == 0]).all()


def test_bare_bert_model_checkpoint_without_prefix(kernels):
    ref = reference("bare")
    model = load_quietly(BertModel, FIXTURES / "bare", kernels=kernels).eval()
    with flow.no_grad():
        out = model(*run_inputs(ref))
    assert max_diff(out.last_hidden_state, ref["last_hidden_state"]) <= ATOL
    assert max_diff(out.pooler_output, ref["pooler_output"]) <= ATOL


def test_gamma_beta_names_and_explicit_tied_decoder(kernels):
    ref = reference("gamma_beta")
    model = load_quietly(BertForPreTraining, FIXTURES / "gamma_beta", kernels=kernels).eval()
    with flow.no_grad():
        out = model(*run_inputs(ref))
    assert max_diff(out.prediction_logits, ref["prediction_logits"]) <= ATOL
    assert max_diff(out.seq_relationship_logits, ref["seq_relationship_logits"]) <= ATOL


def test_prefixed_checkpoint_loads_into_bare_model(pretraining):
    full, ref = pretraining
    bare = BertModel.from_pretrained(FIXTURES / "pretraining", kernels=full.config.kernels).eval()
    with flow.no_grad():
        a = bare(*run_inputs(ref)).last_hidden_state.numpy()
        b = full.bert(*run_inputs(ref)).last_hidden_state.numpy()
    assert np.array_equal(a, b)
    # the heads have nowhere to go in a bare encoder and are reported, not silently dropped
    assert any(n.startswith("cls.") for n in bare.unused_checkpoint_tensors)


def test_padding_does_not_leak_into_real_tokens(pretraining):
    model, ref = pretraining
    ids, segs, mask = ref["input_ids"].copy(), ref["token_type_ids"], ref["attention_mask"]
    with flow.no_grad():
        before = model(as_flow(ids), as_flow(segs), as_flow(mask)).prediction_logits.numpy()
        ids[mask == 0] = 7  # different content behind the mask
        after = model(as_flow(ids), as_flow(segs), as_flow(mask)).prediction_logits.numpy()
    real = mask.astype(bool)
    assert np.abs(before[real] - after[real]).max() <= 1e-5
    assert np.abs(before[~real] - after[~real]).max() > 1e-3  # the padded rows themselves did change


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("cls, variant", [(BertForPreTraining, "pretraining"),
                                          (BertForQuestionAnswering, "qa")])
def test_save_pretrained_round_trip_is_exact(cls, variant, tmp_path):
    ref = reference(variant)
    original = load_quietly(cls, FIXTURES / variant).eval()
    original.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.json", "model.safetensors"}
    reloaded = load_quietly(cls, tmp_path / "ckpt").eval()
    with flow.no_grad():
        a, b = original(*run_inputs(ref)), reloaded(*run_inputs(ref))
    for field in vars(a):
        if getattr(a, field) is not None and not isinstance(getattr(a, field), list):
            assert np.array_equal(getattr(a, field).numpy(), getattr(b, field).numpy()), field
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architectures"] == [cls.__name__] and config["model_type"] == "bert"


def test_saved_pretraining_checkpoint_has_the_tied_decoder_for_transformers(tmp_path):
    from safetensors.numpy import load_file

    BertForPreTraining.from_pretrained(FIXTURES / "pretraining").save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert np.array_equal(tensors["cls.predictions.decoder.weight"],
                          tensors["bert.embeddings.word_embeddings.weight"])
    assert np.array_equal(tensors["cls.predictions.decoder.bias"], tensors["cls.predictions.bias"])


def test_missing_heads_are_listed_in_a_warning():
    with pytest.warns(UserWarning) as record:
        model = BertForPreTraining.from_pretrained(FIXTURES / "bare")
    message = " ".join(str(w.message) for w in record)
    expected = {n for n in model.state_dict() if n.startswith("cls.")}
    assert expected and all(name in message for name in expected)
    assert "bert.encoder" not in message  # the encoder did load

    with pytest.warns(UserWarning, match=r"qa_outputs\.weight"):
        BertForQuestionAnswering.from_pretrained(FIXTURES / "pretraining")


def test_decoder_bias_stands_in_for_a_missing_prediction_bias(tmp_path):
    from safetensors.numpy import load_file, save_file

    shutil.copy(FIXTURES / "pretraining" / "config.json", tmp_path)
    tensors = load_file(str(FIXTURES / "pretraining" / "model.safetensors"))
    tensors["cls.predictions.decoder.bias"] = tensors.pop("cls.predictions.bias")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = load_quietly(BertForPreTraining, tmp_path)
    assert np.array_equal(model.cls.predictions.bias.numpy(), tensors["cls.predictions.decoder.bias"])


def test_config_overrides_apply():
    model = BertForPreTraining.from_pretrained(FIXTURES / "pretraining", hidden_dropout_prob=0.0)
    assert model.config.hidden_dropout_prob == 0.0
    assert model.config.vocab_size == json.loads((FIXTURES / "pretraining/config.json").read_text())["vocab_size"]


# ----------------------------------------------------------------------------------- errors
def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*nowhere"):
        BertForPreTraining.from_pretrained(tmp_path / "nowhere")


def test_file_instead_of_directory(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        BertForPreTraining.from_pretrained(FIXTURES / "pretraining" / "model.safetensors")


def test_missing_config_json(tmp_path):
    shutil.copy(FIXTURES / "pretraining" / "model.safetensors", tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertForPreTraining.from_pretrained(tmp_path)


def test_missing_weights_names_the_file_and_hints_at_pytorch_bin(tmp_path):
    shutil.copy(FIXTURES / "pretraining" / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors") as plain:
        BertForPreTraining.from_pretrained(tmp_path)
    assert "pytorch_model.bin" not in str(plain.value)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin") as hinted:
        BertForPreTraining.from_pretrained(tmp_path)
    assert "safe_serialization" in str(hinted.value) or "convert" in str(hinted.value)


def test_mismatched_shape_names_the_tensor(tmp_path):
    shutil.copy(FIXTURES / "pretraining" / "model.safetensors", tmp_path)
    config = json.loads((FIXTURES / "pretraining" / "config.json").read_text())
    config["type_vocab_size"] = 3  # only the segment embedding changes shape
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"token_type_embeddings\.weight") as err:
        BertForPreTraining.from_pretrained(tmp_path)
    hidden = config["hidden_size"]
    assert f"(2, {hidden})" in str(err.value) and f"(3, {hidden})" in str(err.value)


def test_corrupt_weights_file_names_the_file(tmp_path):
    shutil.copy(FIXTURES / "pretraining" / "config.json", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="model.safetensors"):
        BertForPreTraining.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------- dropout
def test_dropout_only_in_train_mode(pretraining, kernels):
    _, ref = pretraining
    model = BertForPreTraining.from_pretrained(FIXTURES / "pretraining", kernels=kernels)
    assert model.config.hidden_dropout_prob > 0 and model.config.attention_probs_dropout_prob > 0
    inputs = run_inputs(ref)
    model.train()
    with flow.no_grad():
        t1 = model(*inputs).prediction_logits.numpy()
        t2 = model(*inputs).prediction_logits.numpy()
    model.eval()
    with flow.no_grad():
        e1 = model(*inputs).prediction_logits.numpy()
        e2 = model(*inputs).prediction_logits.numpy()
    assert np.abs(t1 - t2).max() > 1e-3
    assert np.array_equal(e1, e2)
    assert np.abs(e1 - ref["prediction_logits"]).max() <= ATOL


def test_fresh_model_init_is_truncated_normal():
    from bertlib.config import BertConfig

    config = BertConfig.tiny(vocab_size=500)
    model = BertForPreTraining(config)
    std = config.initializer_range
    w = model.bert.encoder.layer[0].intermediate.dense.weight.numpy()   # float32 [I, H], 65k values
    assert np.all(model.bert.encoder.layer[0].intermediate.dense.bias.numpy() == 0)
    assert np.all(model.bert.embeddings.LayerNorm.weight.numpy() == 1)
    assert np.abs(w).max() <= 2 * std * (1 + 1e-6)
    # A normal truncated at 2 std has std 0.880 * std and no mass AT the bounds; a clamped one has
    # std 0.96 * std and 4.6% of its values exactly on them.
    at_bounds = np.mean(np.abs(w) >= 2 * std * (1 - 1e-6))
    assert at_bounds < 1e-3, f"{at_bounds:.1%} of the weights sit exactly at +-2 std"
    assert 0.85 * std < w.std() < 0.91 * std
