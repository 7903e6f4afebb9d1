"""The few element-wise and normalisation ops of BERT, each in the formulation that is fastest here.

The model calls these instead of OneFlow's built-ins so that device-specific formulations live in
one place and the model file stays about the maths. Every function computes exactly the textbook
definition (the Hugging Face parity test guards that).
"""
from __future__ import annotations

from .runtime import import_oneflow

flow = import_oneflow()
F = flow.nn.functional


def layer_norm(x, weight, bias, eps: float):
    """x float32 [..., H]; weight, bias float32 [H] -> (x - mean) / sqrt(var + eps) * weight + bias."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def gelu(x):
    """Exact GELU: x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return F.gelu(x)


def softmax(x):
    """Softmax over the last axis."""
    return flow.softmax(x, dim=-1)


def log_softmax(x):
    """Log-softmax over the last axis."""
    return flow.log_softmax(x, dim=-1)
