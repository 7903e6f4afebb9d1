"""Build the Hugging Face reference fixture that tests/test_model.py checks bertlib against.

This script runs in a SEPARATE Python with torch + transformers, never in the project venv
(OneFlow 0.9 and torch must not share an interpreter here, and bertlib must not depend on torch):

    python3.11 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 transformers safetensors
    /tmp/refvenv/bin/python tools/make_hf_reference.py

It writes, under tests/fixtures/hf_reference/:

    pretraining/  HF BertForPreTraining        config.json + model.safetensors + reference.npz
    qa/           HF BertForQuestionAnswering  config.json + model.safetensors + reference.npz
    bare/         HF BertModel (no "bert." prefix, like sentence-transformers' MiniLM)
    gamma_beta/   pretraining's weights renamed the TensorFlow-era way (LayerNorm.gamma/.beta) and
                  with the tied decoder written out explicitly
    metadata.json versions of torch/transformers, the random seed, this script's name and sha256, and the
                  parameter counts transformers gives BERT-base/large

Each reference.npz holds the fixed inputs (with padding and mixed segments) and what transformers
computes for them in eval mode; the losses are computed from HF's logits with torch, following the
reference definitions. The test reads only these files: no reference number is typed by hand.

The models are tiny (< 2 MB committed in total) but deliberately not "fresh": every bias and
LayerNorm parameter is randomised and the weights are wide enough (std 0.2) that attention is far from
uniform, so a swapped bias, a wrong mask or a wrong softmax axis cannot hide behind zeros and ones.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

# Names the test imports from this file (without torch) so both sides agree on the layout.
REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO / "tests" / "fixtures" / "hf_reference"
VARIANTS = ("pretraining", "qa", "bare", "gamma_beta")
REFERENCE_NAME = "reference.npz"
METADATA_NAME = "metadata.json"
SEED = 20240601

# Small, deliberately "odd" sizes so that a transposed matrix or a wrong split of heads fails on shape.
CONFIGS = {
    "pretraining": dict(vocab_size=211, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2),
    "qa": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, type_vocab_size=2),
    "bare": dict(vocab_size=150, hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, type_vocab_size=2),
}
# The paper's two sizes (vocab 30522, 512 positions, 2 segments: transformers' defaults).
PRESETS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
BATCH, SEQ_LEN, MAX_PREDICTIONS = 3, 24, 5
LENGTHS = (24, 17, 9)  # real tokens per row: one full row, two rows with padding at the end


def script_sha256() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def make_inputs(rng, vocab_size: int, seq_len: int = SEQ_LEN):
    """int64 [B, S] ids / segments / mask with padding at the end of some rows.

    Row layout mimics BERT input: [CLS]=1 ... segment A ... segment B ... [PAD]=0 ...
    """
    import numpy as np

    input_ids = np.zeros((BATCH, seq_len), dtype=np.int64)
    token_type_ids = np.zeros((BATCH, seq_len), dtype=np.int64)
    attention_mask = np.zeros((BATCH, seq_len), dtype=np.int64)
    for row, length in enumerate(LENGTHS):
        length = min(length, seq_len)
        input_ids[row, :length] = rng.integers(2, vocab_size, size=length)
        input_ids[row, 0] = 1
        split = max(2, length // 2)
        token_type_ids[row, split:length] = 1
        attention_mask[row, :length] = 1
    return input_ids, token_type_ids, attention_mask


def randomise(model, torch, generator):
    """Give every parameter non-trivial values (HF initialises biases to 0 and LayerNorm to 1/0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            # LayerNorm scales around 1, everything else (weights, biases, embeddings) around 0
            p.copy_(1.0 + 0.2 * noise if name.endswith("LayerNorm.weight") else 0.2 * noise)


def build(cls, config_kwargs, torch, transformers, seed: int):
    torch.manual_seed(seed)
    config = transformers.BertConfig(initializer_range=0.2, **config_kwargs)
    model = cls(config)
    # The reference is the textbook formulation: explicit softmax(QK^T/sqrt(D) + mask) V.
    model.set_attn_implementation("eager")
    randomise(model, torch, torch.Generator().manual_seed(seed))
    return model.eval()


def check_sdpa_agrees(model, inputs, outputs_eager, torch, fields):
    """The reference is eager attention; SDPA must agree, else the reference itself is suspect."""
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        sdpa = model(**inputs)
    model.set_attn_implementation("eager")
    for f in fields:
        diff = (getattr(sdpa, f) - getattr(outputs_eager, f)).abs().max().item()
        assert diff < 1e-5, f"eager vs sdpa differ by {diff} on {f}"


def main() -> int:
    import numpy as np
    import safetensors
    import safetensors.torch
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": Path(__file__).resolve().relative_to(REPO).as_posix(),
        "generator_sha256": script_sha256(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "seed": SEED,
        "variants": {},
    }

    def save_reference(variant, arrays, note):
        out = FIXTURE_DIR / variant
        out.mkdir(parents=True, exist_ok=True)
        arrays = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                  for k, v in arrays.items()}
        np.savez_compressed(out / REFERENCE_NAME, **arrays)
        meta["variants"][variant] = {
            "note": note,
            "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in sorted(arrays.items())},
        }

    # ------------------------------------------------------------------ BertForPreTraining
    model = build(transformers.BertForPreTraining, CONFIGS["pretraining"], torch, transformers, SEED)
    ids, segs, mask = make_inputs(rng, CONFIGS["pretraining"]["vocab_size"])
    inputs = dict(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(segs),
                  attention_mask=torch.from_numpy(mask))
    with torch.no_grad():
        out = model(**inputs)
    check_sdpa_agrees(model, inputs, out, torch, ("prediction_logits", "seq_relationship_logits"))

    # Masked positions inside each row's real tokens (never [CLS]); trailing slots are padding
    # (position 0, id 0, weight 0) as Google's create_pretraining_data writes them.
    positions = np.zeros((BATCH, MAX_PREDICTIONS), dtype=np.int64)
    weights = np.zeros((BATCH, MAX_PREDICTIONS), dtype=np.float32)
    lm_ids = np.zeros((BATCH, MAX_PREDICTIONS), dtype=np.int64)
    for row, (length, n_real) in enumerate(zip(LENGTHS, (5, 3, 2))):
        chosen = np.sort(rng.choice(np.arange(1, length), size=n_real, replace=False))
        positions[row, :n_real] = chosen
        weights[row, :n_real] = 1.0
        lm_ids[row, :n_real] = rng.integers(2, CONFIGS["pretraining"]["vocab_size"], size=n_real)
    nsp_labels = np.array([0, 1, 1], dtype=np.int64)

    logits = out.prediction_logits                                           # [B, S, V]
    pos_t = torch.from_numpy(positions)
    at_positions = torch.gather(logits, 1, pos_t.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    ce = F.cross_entropy(at_positions.reshape(-1, logits.shape[-1]), torch.from_numpy(lm_ids).reshape(-1),
                         reduction="none")                                   # [B*P]
    w = torch.from_numpy(weights).reshape(-1)
    mlm_loss = (ce * w).sum() / w.sum()
    nsp_loss = F.cross_entropy(out.seq_relationship_logits, torch.from_numpy(nsp_labels))
    model.save_pretrained(FIXTURE_DIR / "pretraining", safe_serialization=True)
    pretraining_arrays = dict(
        input_ids=ids, token_type_ids=segs, attention_mask=mask,
        masked_lm_positions=positions, masked_lm_ids=lm_ids, masked_lm_weights=weights,
        next_sentence_labels=nsp_labels,
        prediction_logits=logits, seq_relationship_logits=out.seq_relationship_logits,
        mlm_logits_at_positions=at_positions,
        mlm_loss=mlm_loss, nsp_loss=nsp_loss, total_loss=mlm_loss + nsp_loss,
    )
    save_reference("pretraining", pretraining_arrays, "HF BertForPreTraining, eval mode")

    # -------------------------------------------------------- gamma/beta + explicit tied decoder
    # Same weights as `pretraining`, stored with the TF-era LayerNorm names and the tied decoder
    # tensors present; transformers itself is asked to load it back, so the reference outputs are
    # what HF computes from this very file.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    renamed = {}
    for name, tensor in state.items():
        if name.endswith("LayerNorm.weight"):
            name = name[: -len("weight")] + "gamma"
        elif name.endswith("LayerNorm.bias"):
            name = name[: -len("bias")] + "beta"
        renamed[name] = tensor.clone()
    renamed["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    renamed["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    gb_dir = FIXTURE_DIR / "gamma_beta"
    gb_dir.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(renamed, str(gb_dir / "model.safetensors"), metadata={"format": "pt"})
    (gb_dir / "config.json").write_text((FIXTURE_DIR / "pretraining" / "config.json").read_text())
    try:
        hf_gb = transformers.BertForPreTraining.from_pretrained(gb_dir, attn_implementation="eager").eval()
        with torch.no_grad():
            gb_out = hf_gb(**inputs)
        gb_note = "pretraining weights with LayerNorm.gamma/beta names; outputs computed by transformers from this file"
    except Exception as exc:  # noqa: BLE001 - a transformers that refuses old names: reuse the originals
        print(f"transformers could not load gamma/beta names ({exc}); reusing pretraining outputs")
        gb_out, gb_note = out, "pretraining weights renamed; outputs are pretraining's (same weights)"
    gb_diff = (gb_out.prediction_logits - out.prediction_logits).abs().max().item()
    assert gb_diff == 0.0, f"transformers read the gamma/beta file differently ({gb_diff})"
    save_reference("gamma_beta", dict(
        input_ids=ids, token_type_ids=segs, attention_mask=mask,
        prediction_logits=gb_out.prediction_logits,
        seq_relationship_logits=gb_out.seq_relationship_logits,
    ), gb_note)

    # ---------------------------------------------------------------- BertForQuestionAnswering
    model = build(transformers.BertForQuestionAnswering, CONFIGS["qa"], torch, transformers, SEED + 1)
    ids, segs, mask = make_inputs(rng, CONFIGS["qa"]["vocab_size"])
    inputs = dict(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(segs),
                  attention_mask=torch.from_numpy(mask))
    with torch.no_grad():
        out = model(**inputs)
    check_sdpa_agrees(model, inputs, out, torch, ("start_logits", "end_logits"))
    # answers inside each row's real tokens, end >= start
    starts = np.array([rng.integers(1, n) for n in LENGTHS], dtype=np.int64)
    ends = np.array([rng.integers(s, n) for s, n in zip(starts, LENGTHS)], dtype=np.int64)
    loss = (F.cross_entropy(out.start_logits, torch.from_numpy(starts))
            + F.cross_entropy(out.end_logits, torch.from_numpy(ends))) / 2
    model.save_pretrained(FIXTURE_DIR / "qa", safe_serialization=True)
    save_reference("qa", dict(
        input_ids=ids, token_type_ids=segs, attention_mask=mask,
        start_positions=starts, end_positions=ends,
        start_logits=out.start_logits, end_logits=out.end_logits, squad_loss=loss,
    ), "HF BertForQuestionAnswering, eval mode")

    # ------------------------------------------------------------------- bare BertModel
    model = build(transformers.BertModel, CONFIGS["bare"], torch, transformers, SEED + 2)
    ids, segs, mask = make_inputs(rng, CONFIGS["bare"]["vocab_size"])
    inputs = dict(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(segs),
                  attention_mask=torch.from_numpy(mask))
    with torch.no_grad():
        out = model(**inputs)
    check_sdpa_agrees(model, inputs, out, torch, ("last_hidden_state", "pooler_output"))
    model.save_pretrained(FIXTURE_DIR / "bare", safe_serialization=True)
    save_reference("bare", dict(
        input_ids=ids, token_type_ids=segs, attention_mask=mask,
        last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output,
    ), "HF BertModel saved without the bert. prefix")

    # Parameter counts of the full-size presets as transformers builds them (on the meta device: no
    # memory, no random numbers), for bertlib's live counts to be checked against.
    meta["parameter_counts"] = {}
    for preset, sizes in PRESETS.items():
        config = transformers.BertConfig(**sizes)
        with torch.device("meta"):
            meta["parameter_counts"][preset] = {
                cls.__name__: sum(p.numel() for p in cls(config).parameters())
                for cls in (transformers.BertModel, transformers.BertForPreTraining,
                            transformers.BertForQuestionAnswering)
            }

    # Listed once everything is written: the test checks that nothing is missing or stray.
    for variant in VARIANTS:
        meta["variants"][variant]["files"] = sorted(p.name for p in (FIXTURE_DIR / variant).iterdir())
    (FIXTURE_DIR / METADATA_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    total = sum(p.stat().st_size for p in FIXTURE_DIR.rglob("*") if p.is_file())
    print(f"wrote {FIXTURE_DIR.relative_to(REPO)}: {total / 1e6:.2f} MB "
          f"(torch {torch.__version__}, transformers {transformers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
