"""The few element-wise and normalisation ops of BERT, each in the formulation that is fastest here.

The model calls these instead of OneFlow's built-ins so that device-specific formulations live in
one place and the model file stays about the maths. Every function computes exactly the textbook
definition (the Hugging Face parity test guards the forward pass, tests/test_kernels.py the
gradients against OneFlow's built-ins).

Why this file exists: OneFlow 0.9's CPU kernels are single-threaded and of very uneven quality.
Matrix products run at ~110 GFLOP/s per core (MKL), flat element-wise arithmetic is vectorised
(~0.5 ns per float), and the forward softmax / log-softmax are fast. But, measured on the 2-core
AMD EPYC (Zen 3) development machine (ms, one core, see bench/RESULTS.md for the whole table):

* broadcasting a *column* ``x[M, H] - m[M, 1]`` is ~60x slower than a flat op, and its backward
  (a sum over the last axis) is as slow; ``m @ ones[1, H]`` builds the same [M, H] operand with a
  K=1 matmul in a flat op's time. Row sums are likewise ``x @ ones[H, 1]``;
* ``layer_norm`` forward+backward on [1024, 768]: 340 ms built-in, ~15 ms written with the two
  tricks above and an explicit backward;
* ``erf`` / ``exp`` / ``tanh`` are scalar libm loops (5-30 ns per float) and the built-in GELU's
  backward kernel is ~8x slower than its forward;
* ``softmax`` / ``log_softmax`` backward kernels are 5-20x slower than their (oneDNN) forwards.

So on the CPU each op below is an ``autograd.Function`` whose forward and backward use only the
fast primitives (matmul, flat arithmetic, the forward softmax kernels). On CUDA OneFlow's native
fused kernels are the fast ones and are used unchanged. Formulations are chosen per call from the
tensor's device, so one model object works on both, eagerly or inside ``nn.Graph`` (a custom
``autograd.Function`` is traced into the graph like any other op).
"""
from __future__ import annotations

import math

from .runtime import import_oneflow

flow = import_oneflow()
F = flow.nn.functional

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------- helpers
def on_cpu(x) -> bool:
    """True when ``x`` (local or global, eager or traced in a graph) lives on the CPU."""
    if x.is_global:
        return x.placement.type == "cpu"
    return x.device.type == "cpu"


_CONSTANTS = {}


def _const(shape, value: float, like):
    """A float tensor filled with ``value`` on ``like``'s device (placement, broadcast, if global).

    Eager constants are cached (``flow.full`` costs ~0.2 ms of Python per call, a few hundred calls
    per step); inside a graph they are traced as constant ops.
    """
    shape = tuple(int(s) for s in shape)
    if like.is_lazy:
        if like.is_global:
            return flow._C.global_constant(shape, value, dtype=like.dtype, placement=like.placement,
                                           sbp=[flow.sbp.broadcast] * len(like.sbp))
        return flow._C.constant(shape, value, dtype=like.dtype, device=like.device)
    where = (str(like.placement), len(like.sbp)) if like.is_global else str(like.device)
    key = (shape, value, like.dtype, where)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        if like.is_global:
            tensor = flow._C.global_constant(shape, value, dtype=like.dtype, placement=like.placement,
                                             sbp=[flow.sbp.broadcast] * len(like.sbp))
        else:
            tensor = flow._C.constant(shape, value, dtype=like.dtype, device=like.device)
        if len(_CONSTANTS) > 256:   # shapes change with batch size; keep the cache bounded
            _CONSTANTS.clear()
        _CONSTANTS[key] = tensor
    return tensor


def _row_mean(x):
    """x [M, H] -> [M, 1] mean of each row, as a matmul with a column of 1/H (fast on CPU)."""
    return flow.matmul(x, _const((x.shape[1], 1), 1.0 / x.shape[1], x))


def _row_sum(x):
    """x [..., H] -> [..., 1] sum of each row, as a matmul with a column of ones."""
    return flow.matmul(x, _const((x.shape[-1], 1), 1.0, x))


def _spread(col, width: int):
    """col [..., 1] -> [..., width] with every row constant: a K=1 matmul instead of a broadcast."""
    return flow.matmul(col, _const((1, width), 1.0, col))


def _column_sum(x):
    """x [M, H] -> [H] sum over rows (the gradient of a row-broadcast parameter), as a matmul."""
    return flow.matmul(_const((1, x.shape[0]), 1.0, x), x).reshape(x.shape[1])


# ------------------------------------------------------------------------------------ layer norm
class _CpuLayerNorm(flow.autograd.Function):
    """LayerNorm over the last axis of a 2-D x [M, H], with weight and bias [H].

    Forward: mean and variance (two-pass, as the built-in) by row-sum matmuls, centring and scaling
    by K=1 matmul broadcasts. Backward, with xhat = (x - mean) * rstd and g = dy * weight:
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_rows(dy * xhat),
        dbias = sum_rows(dy).
    ``eps`` is bound per subclass (autograd.Function.apply accepts tensors only).
    """

    eps = 1e-12

    @classmethod
    def forward(cls, ctx, x, weight, bias):
        H = x.shape[1]
        centred = x - _spread(_row_mean(x), H)                              # [M, H]
        rstd = flow.rsqrt(_row_mean(flow.square(centred)) + cls.eps)        # [M, 1]
        xhat = centred * _spread(rstd, H)                                   # [M, H]
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight + bias                                         # row broadcasts: fast

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved_tensors
        H = xhat.shape[1]
        g = dy * weight                                                     # [M, H]
        dx = (g - _spread(_row_mean(g), H) - xhat * _spread(_row_mean(g * xhat), H)) * _spread(rstd, H)
        return dx, _column_sum(dy * xhat), _column_sum(dy)


_LAYER_NORMS = {}


def _cpu_layer_norm_fn(eps: float):
    fn = _LAYER_NORMS.get(eps)
    if fn is None:
        fn = _LAYER_NORMS[eps] = type(f"_CpuLayerNorm_{eps:g}", (_CpuLayerNorm,), {"eps": eps})
    return fn


def layer_norm(x, weight, bias, eps: float):
    """x float32 [..., H]; weight, bias float32 [H] -> (x - mean) / sqrt(var + eps) * weight + bias."""
    if not on_cpu(x):
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    shape = x.shape
    y = _cpu_layer_norm_fn(eps).apply(x.reshape(-1, shape[-1]), weight, bias)
    return y.reshape(shape)


# ------------------------------------------------------------------------------------------ GELU
class _CpuGelu(flow.autograd.Function):
    """GELU(x) = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2; d/dx = Phi(x) + x * phi(x).

    One erf in the forward (Phi is kept for the backward) and one exp in the backward
    (phi(x) = exp(-x^2 / 2) / sqrt(2 pi)); the rest is flat arithmetic. The built-in GELU's backward
    kernel evaluates erf and exp per element in a slow scalar loop.
    """

    @staticmethod
    def forward(ctx, x):
        cdf = flow.erf(x * _INV_SQRT2) * 0.5 + 0.5                          # Phi(x)
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx, dy):
        x, cdf = ctx.saved_tensors
        pdf = flow.exp(flow.square(x) * -0.5) * _INV_SQRT_2PI                # phi(x)
        return dy * (cdf + x * pdf)


def gelu(x):
    """Exact GELU: x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."""
    if not on_cpu(x):
        return F.gelu(x)
    return _CpuGelu.apply(x)


# ------------------------------------------------------------------------------ softmax family
class _CpuSoftmax(flow.autograd.Function):
    """Softmax over the last axis: the built-in (fast) forward, dx = p * (dy - sum(dy * p))."""

    @staticmethod
    def forward(ctx, x):
        p = flow.softmax(x, dim=-1)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, dy):
        (p,) = ctx.saved_tensors
        return p * (dy - _spread(_row_sum(dy * p), p.shape[-1]))


class _CpuLogSoftmax(flow.autograd.Function):
    """Log-softmax over the last axis: built-in forwards, dx = dy - softmax(x) * sum(dy).

    softmax(x) comes from the fast forward kernel (cheaper than exp(log_softmax) here).
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(flow.softmax(x, dim=-1))
        return flow.log_softmax(x, dim=-1)

    @staticmethod
    def backward(ctx, dy):
        (p,) = ctx.saved_tensors
        return dy - p * _spread(_row_sum(dy), p.shape[-1])


def softmax(x):
    """Softmax over the last axis."""
    if not on_cpu(x):
        return flow.softmax(x, dim=-1)
    return _CpuSoftmax.apply(x)


def log_softmax(x):
    """Log-softmax over the last axis."""
    if not on_cpu(x):
        return flow.log_softmax(x, dim=-1)
    return _CpuLogSoftmax.apply(x)
