"""What both benchmark workers share: the BERT sizes, the synthetic batches and the FLOP count.

Imported by the bertlib worker (Python 3.10 + OneFlow) and by the Hugging Face worker (Python 3.11 +
PyTorch), so it depends on numpy and the standard library only.
"""
from __future__ import annotations

import json
import os
import resource

import numpy as np

SEQ_LEN = 128           # tokens per example
MASKED = 20             # masked positions per example (max_predictions_per_seq)

# Same numbers as bertlib.config.BertConfig.base() / .tiny(); HF BertConfig takes the same keys.
CONFIGS = {
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 layer_norm_eps=1e-12, initializer_range=0.02),
    "tiny": dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=512, max_position_embeddings=512, type_vocab_size=2,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 layer_norm_eps=1e-12, initializer_range=0.02),
}

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01     # on weight matrices and embeddings; not on biases and LayerNorm gains
ADAM_EPS = 1e-6


def synthetic_batches(config: dict, batch: int, count: int, seed: int):
    """``count`` batches of pre-training inputs as int64/float32 numpy arrays (same for both sides).

    Every sequence is full (no padding), sentence B starts half-way, 20 distinct masked positions
    outside [CLS] and the last token, all 20 weights 1.
    """
    rng = np.random.RandomState(seed)
    V, S, P = config["vocab_size"], SEQ_LEN, MASKED
    out = []
    for _ in range(count):
        positions = np.sort(np.stack([rng.choice(np.arange(1, S - 1), P, replace=False)
                                      for _ in range(batch)]), axis=1)
        out.append(dict(
            input_ids=rng.randint(0, V, (batch, S)).astype(np.int64),
            token_type_ids=np.repeat((np.arange(S) >= S // 2)[None].astype(np.int64), batch, 0),
            attention_mask=np.ones((batch, S), np.int64),
            masked_lm_positions=positions.astype(np.int64),
            masked_lm_ids=rng.randint(0, V, (batch, P)).astype(np.int64),
            masked_lm_weights=np.ones((batch, P), np.float32),
            next_sentence_labels=rng.randint(0, 2, (batch,)).astype(np.int64),
        ))
    return out


def flops_per_sample(config: dict, mlm_positions: int = MASKED) -> float:
    """Model FLOPs of one training example (forward + backward = 3 x forward, 2 FLOPs per MAC).

    6 x (weights used per token) x tokens for every dense layer, plus the attention products
    (Q K^T and P V: 2 x S^2 x H MACs per layer forward). The MLM transform and the tied decoder
    count at ``mlm_positions`` tokens (20 for the work that pre-training needs; 128 for the HF
    "as users call it" variant, whose extra work is then counted as hardware FLOPs).
    """
    H, I, L, V = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    S = SEQ_LEN
    encoder = L * (4 * H * H + 2 * H * I) * S          # Q, K, V, output projection, FFN in and out
    attention = L * 2 * S * S * H                       # MACs of Q K^T and P V, forward
    heads = (H * H + V * H) * mlm_positions             # MLM transform + decoder
    pooler_nsp = H * H + 2 * H                          # [CLS] only
    return 6.0 * (encoder + heads + pooler_nsp) + 3.0 * 2 * attention


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sys_seconds() -> float:
    """System (kernel) CPU time of this process so far: spinning threads show up here."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def write_json(path: str, data: dict):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
