"""Optimiser and learning-rate schedule of BERT's recipe.

* AdamW (eps 1e-6) or LAMB, weight decay 0.01 on weight matrices only: decaying biases and
  LayerNorm gains pulls them towards 0 for no benefit, so both are left out, as in Google's code.
* gradients clipped to a global L2 norm of 1.0 (done by the trainer).
* learning rate: linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total``.
"""
from __future__ import annotations

from .runtime import import_oneflow

NO_DECAY = ("bias", "LayerNorm.weight")


def parameter_groups(model, weight_decay: float):
    """Two groups: matrices and embeddings with ``weight_decay``, biases and LayerNorm gains without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, name: str, learning_rate: float, weight_decay: float):
    """``adamw`` or ``lamb`` over :func:`parameter_groups`, betas (0.9, 0.999), eps 1e-6."""
    flow = import_oneflow()
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        return flow.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-6)
    if name == "lamb":
        return flow.optim.LAMB(groups, lr=learning_rate, betas=(0.9, 0.999), eps=1e-6, adam_w_mode=True)
    raise ValueError(f"--optimizer must be adamw or lamb (got {name!r})")


def warmup_linear_decay(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): 0 -> 1 over warmup, then 1 -> 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    return max(0.0, (total - step) / (total - warmup))
