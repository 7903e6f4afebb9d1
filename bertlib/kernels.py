"""The few element-wise and normalisation ops of BERT, each in the formulation that is fastest here.

The model calls these instead of OneFlow's built-ins so that device-specific formulations live in
one place and the model file stays about the maths. Every function computes exactly the textbook
definition (the Hugging Face parity test guards the forward pass, tests/test_kernels.py the
gradients against OneFlow's built-ins).

Why this file exists: OneFlow 0.9's CPU kernels are single-threaded and of very uneven quality.
Matrix products run at ~88 GFLOP/s per core (its bundled OpenBLAS, once bertlib.runtime names the
AVX2 kernels on AMD CPUs), flat element-wise arithmetic is vectorised (~0.5 ns per float) and the
forward softmax / log-softmax are fast. The rest is slow. Measured on the 2-core AMD EPYC (Zen 3)
development machine, one core, fwd+bwd (bench/op_profile.py prints these at the model's shapes):

* broadcasting a *column* ``x[M, H] - m[M, 1]`` is ~60x slower than a flat op, and its backward
  (a sum over the last axis) is as slow; ``m @ ones[1, H]`` builds the same [M, H] operand with a
  K=1 matmul in a flat op's time. Row sums are likewise ``x @ ones[H, 1]``;
* ``layer_norm`` on [1024, 768]: 344 ms built-in, 11 ms written with those two tricks and an
  explicit backward (on [4096, 128]: 290-495 ms vs 13-15 ms);
* ``erf`` / ``exp`` / ``tanh`` / ``sqrt`` are scalar libm loops (8-25 ns per float) and the
  built-in GELU's backward kernel is slower than its forward;
* ``log_softmax``'s backward kernel is ~10x slower than its forward, and linear's bias gradient
  goes through a slow column-sum kernel;
* dropout draws its mask one scalar at a time (~10 ns per element), and the batched matmul of the
  attention heads wants contiguous [B, N, S, D] operands, so splitting and merging the heads costs
  permute copies in both passes.

So on the CPU each op below (softmax aside: its built-in backward is fine) is an
``autograd.Function`` whose forward and backward use only the fast primitives (matmul, flat
arithmetic, the forward softmax kernels). Two go further and, in eager mode on the CPU, let NumPy
work on the tensors' memory (zero-copy both ways): dropout masks come from NumPy's PCG64 (seeded by
the layer's OneFlow generator) and the attention core reads the heads in place with NumPy's
batched matmul. On CUDA OneFlow's native fused kernels are the fast ones and are used unchanged.
Formulations are chosen per call from the tensor, so one model object works on both, eagerly or
inside ``nn.Graph`` (a custom ``autograd.Function`` is traced into the graph like any other op;
the NumPy paths step aside for graph and global tensors).
"""
from __future__ import annotations

import math

import numpy as np

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


def eager_on_cpu(x) -> bool:
    """True for a local CPU tensor outside nn.Graph: where NumPy can work on the tensor's memory."""
    return not x.is_lazy and not x.is_global and on_cpu(x)


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
    """x [..., H] -> [..., 1] sum of each row, as one matmul with a column of ones.

    Leading axes are flattened first: one [M, H] x [H, 1] product, not a batch of tiny ones.
    """
    H = x.shape[-1]
    return flow.matmul(x.reshape(-1, H), _const((H, 1), 1.0, x)).reshape(*x.shape[:-1], 1)


def _spread(col, width: int):
    """col [..., 1] -> [..., width] with every row constant: a K=1 matmul instead of a broadcast."""
    out = flow.matmul(col.reshape(-1, 1), _const((1, width), 1.0, col))
    return out.reshape(*col.shape[:-1], width)


def _column_sum(x):
    """x [M, H] -> [H] sum over rows (the gradient of a row-broadcast parameter), as a matmul."""
    return flow.matmul(_const((1, x.shape[0]), 1.0, x), x).reshape(x.shape[1])


# ---------------------------------------------------------------------------------------- linear
class _CpuLinear(flow.autograd.Function):
    """y = x W^T + b for x [M, in], W [out, in], b [out] (the built-in forward).

    The backward is three matmuls: dx = dy W, dW = dy^T x, db = ones[1, M] dy. The built-in
    backward reduces the bias gradient with a slow column-sum kernel (F.linear [1024, 768] -> 3072:
    184 ms fwd+bwd with bias, 172 without; this: 176).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx = flow.matmul(dy, weight)
        dweight = flow._C.matmul(dy, x, transpose_a=True, transpose_b=False)
        return dx, dweight, _column_sum(dy)


def linear(x, weight, bias=None):
    """x float32 [..., in]; weight [out, in]; bias [out] or None -> x W^T + b, float32 [..., out]."""
    if bias is None or not on_cpu(x):
        return F.linear(x, weight, bias)
    shape = x.shape
    y = _CpuLinear.apply(x.reshape(-1, shape[-1]), weight, bias)
    return y.reshape(*shape[:-1], weight.shape[0])


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
def _exp_of_nonpositive_rows(u, scale: float = 1.0):
    """scale * exp(u) for u <= 0, float32 [M, K], through OneFlow's vectorised softmax kernel.

    ``flow.exp`` is a scalar libm loop here (8 ns per float); the softmax kernel evaluates exp
    vectorised. Softmax over each row with a 0 appended, [u_1 .. u_K, 0], gives exp(u_i) / Z and
    1 / Z (Z = 1 + sum exp(u_j) <= K + 1, no overflow since u <= 0), so exp(u_i) is their ratio:
    a few ulp from the libm value, at half its cost.
    """
    M, K = u.shape
    p = flow.softmax(flow.cat([u, _const((M, 1), 0.0, u)], dim=1), dim=-1)      # [M, K + 1]
    inv_last = flow.reciprocal(p[:, K:]) * scale                                 # [M, 1] = scale Z
    return p[:, :K] * _spread(inv_last, K)


# erfc(z) = t R(t) exp(-z^2), t = 1 / (1 + _ERFC_P z), z >= 0, with R a degree-6 polynomial fitted
# near-minimax in the relative error over z in [0, 6.5] (x down to -9.2) by
#     python tools/fit_erfc.py --relative --zmax 6.5 --degrees 6 --p 0.5
# max relative error 3.6e-7 (in float64; float32 evaluation adds its own rounding). Coefficients of
# t^0 .. t^6. (Degree 9 reached 3e-8 for six more flat ops per GELU; float32 cannot tell them apart.)
_ERFC_P = 0.5
_ERFC_R = (
    0.28248541527365745, 0.2755857932483042, 0.2916851759322089, 0.011671370829773542,
    0.42532699645331684, -0.38205545078403047, 0.09530105293513486,
)


# Flat ops on [1024, 3072] tensors (12.6 MB each) stream through DRAM; on pieces of ~1.5 MB the
# operands of a chain of ops stay in the last-level cache: GELU's forward on [1024, 3072] takes
# 65 ms in one piece and 38 ms in pieces of 128 rows (measured on the 2-core EPYC, 32 MB L3).
_CHUNK_FLOATS = 128 * 3072


def _row_chunks(x):
    """Split x [M, K] along rows into pieces of about _CHUNK_FLOATS elements (views, no copy)."""
    rows = max(1, _CHUNK_FLOATS // x.shape[1])
    return [x] if x.shape[0] <= rows else list(flow.split(x, rows, dim=0))


def _gelu_and_slope(x):
    """x [m, K] -> (GELU(x), dGELU/dx), both [m, K]; see _CpuGelu."""
    t = flow.reciprocal(flow.abs(x) * (_ERFC_P / math.sqrt(2.0)) + 1.0)
    # q / phi(x) = t R(t) sqrt(2 pi) / 2 by Horner, the constant folded into the coefficients
    c = 0.5 * math.sqrt(2.0 * math.pi)
    acc = t * (_ERFC_R[-1] * c)
    for coef in reversed(_ERFC_R[:-1]):
        acc = (acc + coef * c) * t
    pdf = _exp_of_nonpositive_rows(flow.square(x) * -0.5, _INV_SQRT_2PI)     # phi(x)
    q = acc * pdf                                                            # Phi(-|x|)
    # Phi = h - sign(x) q with h = 1, 1/2, 0 for x >, =, < 0: in the negative tail Phi = q exactly,
    # where 1/2 + sign(x) (1/2 - q) would cancel to 0 below x = -5.5. (Not flow.where(x > 0, ..):
    # OneFlow's CPU comparison with a scalar costs 300 ms on [1024, 3072], sign 2.5 ms.)
    sign = flow.sign(x)
    cdf = (sign * 0.5 + 0.5) - sign * q                                     # Phi(x)
    return x * cdf, cdf + x * pdf


class _CpuGelu(flow.autograd.Function):
    """GELU(x) = x Phi(x) on rows x [M, K]; dGELU/dx = Phi(x) + x phi(x).

    OneFlow's CPU erf costs 19 ns per float and its GELU backward kernel ~40, while flat arithmetic
    costs ~0.5 ns. So Phi is written with one exponential, shared with the derivative:
        q = erfc(|x| / sqrt 2) / 2 = t R(t) phi(x) sqrt(2 pi) / 2,   Phi(x) = q for x < 0, 1 - q else,
    with phi(x) = exp(-x^2 / 2) / sqrt(2 pi) from :func:`_exp_of_nonpositive_rows`, evaluated on
    cache-sized row pieces. The forward also forms the derivative and keeps only it, so the
    backward is one product (and one [M, K] tensor is saved instead of three). [1024, 3072]
    fwd+bwd: built-in 103 ms, this ~45. Error vs a float64 reference at float32 rounding level,
    as the built-in's, and relative accuracy kept in the negative tail (tests/test_kernels.py).
    """

    @staticmethod
    def forward(ctx, x):
        pieces = [_gelu_and_slope(part) for part in _row_chunks(x)]
        if len(pieces) == 1:
            y, slope = pieces[0]
        else:
            y = flow.cat([p[0] for p in pieces], dim=0)
            slope = flow.cat([p[1] for p in pieces], dim=0)
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    def backward(ctx, dy):
        (slope,) = ctx.saved_tensors
        return dy * slope


def gelu(x):
    """Exact GELU: x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."""
    if not on_cpu(x):
        return F.gelu(x)
    shape = x.shape
    return _CpuGelu.apply(x.reshape(-1, shape[-1])).reshape(shape)


# ------------------------------------------------------------------------------ softmax family
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
    """Softmax over the last axis.

    OneFlow's own kernel on every device: on the CPU its forward is vectorised and its backward
    (6.4 ms fwd+bwd on [8, 12, 128, 128]) beat the matmul-reduction backward (9.8 ms) we tried.
    """
    return flow.softmax(x, dim=-1)


def log_softmax(x):
    """Log-softmax over the last axis."""
    if not on_cpu(x):
        return flow.log_softmax(x, dim=-1)
    return _CpuLogSoftmax.apply(x)


class _CpuCrossEntropy(flow.autograd.Function):
    """Per-row cross-entropy -log softmax(logits)[label] for logits [M, C], labels int64 [M].

    Forward: the built-in (fast) log-softmax and a gather, plus the softmax kept for the backward.
    Backward: dlogits = g * (softmax - onehot): the softmax scaled per row by a K=1 matmul, then g
    subtracted at the labels in place. Autograd through log_softmax + gather would first write a
    dense one-hot gradient and run log-softmax's slow backward kernel. MLM loss on [640, 30522]:
    built-in 298 ms fwd+bwd, our log_softmax + gather 137, this 123.
    """

    @staticmethod
    def forward(ctx, logits, labels):
        ctx.save_for_backward(flow.softmax(logits, dim=-1), labels)
        log_probs = flow.log_softmax(logits, dim=-1)
        return -flow.gather(log_probs, 1, labels.unsqueeze(1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad):
        probs, labels = ctx.saved_tensors
        dlogits = probs * _spread(grad.reshape(-1, 1), probs.shape[1])
        dlogits.scatter_add_(1, labels.unsqueeze(1), -grad.reshape(-1, 1))
        return dlogits, None


def cross_entropy(logits, labels):
    """logits float32 [M, C], labels int64 [M] -> per-row loss float32 [M] (-log softmax at label)."""
    if not on_cpu(logits):
        return -flow.gather(flow.log_softmax(logits, dim=-1), 1, labels.unsqueeze(1)).squeeze(1)
    return _CpuCrossEntropy.apply(logits, labels)


# --------------------------------------------------------------------------------------- dropout
class DropoutStream:
    """The NumPy random stream behind one dropout layer's CPU masks.

    OneFlow's CPU dropout draws its mask one scalar at a time (~10 ns per element: 19 ms for the
    [8, 12, 128, 128] attention probabilities); NumPy's PCG64 fills float32 uniforms at ~4 ns.
    The stream is a pure function of the layer's OneFlow generator seed and the number of masks
    drawn since that seed was set, so ``generator.manual_seed`` (what bertlib's trainer does at
    every step for exact resumption) still decides every mask. Reading the seed costs 0.4 us;
    drawing from the OneFlow generator itself would cost 0.4-3 ms per mask.
    """

    def __init__(self):
        self.seed = None
        self.rng = None

    def reset(self):
        """Start the stream again from the generator's seed at the next mask."""
        self.seed = None

    def uniform(self, generator, shape) -> np.ndarray:
        seed = generator.initial_seed()
        if seed != self.seed:
            self.seed, self.rng = seed, np.random.Generator(np.random.PCG64(seed))
        return self.rng.random(shape, dtype=np.float32)


def dropout_mask(p: float, generator, stream: DropoutStream, shape) -> np.ndarray:
    """float32 array of ``shape``: 1 / (1 - p) with probability 1 - p, else 0 (a scaled Bernoulli mask)."""
    keep = 1.0 - p
    u = stream.uniform(generator, tuple(shape))
    kept = np.less(u, np.float32(keep))
    np.multiply(kept, np.float32(1.0 / keep), out=u)                  # the scaled mask, in place
    return u


def dropout(x, p: float, training: bool, generator, stream: DropoutStream, addend=None):
    """Inverted dropout: x * mask / (1 - p), mask ~ Bernoulli(1 - p) per element, then + addend.

    x float32 [...]; addend None or float32 of x's shape (the residual, added in the same call as
    OneFlow's fused ``dropout(x, addend=...)``). On the CPU, eagerly, the mask comes from
    ``stream`` (see :class:`DropoutStream`) and autograd differentiates the product: dx = dy * mask.
    Elsewhere (CUDA, nn.Graph, global tensors) OneFlow's own kernel with ``generator``.
    """
    if not training or p == 0.0:
        return x if addend is None else x + addend
    if not eager_on_cpu(x):
        return flow._C.dropout(x, p, training, False, generator, addend=addend)
    y = x * flow.from_numpy(dropout_mask(p, generator, stream, x.shape))
    return y if addend is None else y + addend


# ------------------------------------------------------------------------------ self-attention

class _CpuAttentionCore(flow.autograd.Function):
    """softmax(Q K^T / sqrt(D) + mask_bias), dropout, times V, for every head, with NumPy's matmul.

    Inputs: qkv float32 [B, S, 3, N, D] (the fused projection, contiguous), mask_bias float32
    [B, 1, 1, S], keep float32 [B, N, S, S] (the scaled dropout mask; all ones without dropout).
    Outputs: context float32 [B, S, N * D] and the probabilities float32 [B, N, S, S] (pre-dropout).

    Why: OneFlow's batched matmul needs contiguous [B, N, S, D] operands, so splitting the heads
    costs permute copies both ways, and it runs these 128 x 64 x 128 products at ~40 GFLOP/s. NumPy's
    matmul reads Q, K, V in place as strided views of qkv (each [S, D] head is a BLAS matrix with
    leading dimension 3 N D), writes the context straight into [B, S, N, D] order and the gradients
    straight into their slots of d qkv. The softmax stays OneFlow's (vectorised exp).
    Backward, with P the probabilities, P' = P * keep and G = d context:
        dV = P'^T G,  dP = (G V^T) * keep + d probs,  dS = P * (dP - rowsum(dP * P)),
        dQ = dS K / sqrt(D),  dK = dS^T Q / sqrt(D).
    """

    @staticmethod
    def forward(ctx, qkv, mask_bias, keep):
        a = qkv.numpy()                                                          # [B, S, 3, N, D]
        B, S, _, N, D = a.shape
        scale = np.float32(1.0 / math.sqrt(D))
        q = np.multiply(a[:, :, 0], scale).transpose(0, 2, 1, 3)                # [B, N, S, D], scaled
        k, v = a[:, :, 1].transpose(0, 2, 1, 3), a[:, :, 2].transpose(0, 2, 1, 3)
        scores = np.matmul(q, k.transpose(0, 1, 3, 2))                          # [B, N, S, S]
        scores += mask_bias.numpy()                                             # [B, 1, 1, S] rows
        probs = flow.softmax(flow.from_numpy(scores), dim=-1)                   # [B, N, S, S]
        dropped = np.multiply(probs.numpy(), keep.numpy())                      # [B, N, S, S]
        context = np.empty((B, S, N, D), np.float32)
        np.matmul(dropped, v, out=context.transpose(0, 2, 1, 3))                # heads merged in place
        ctx.save_for_backward(qkv, probs, keep, flow.from_numpy(dropped))
        return flow.from_numpy(context.reshape(B, S, N * D)), probs

    @staticmethod
    def backward(ctx, d_context, d_probs):
        qkv, probs, keep, dropped = ctx.saved_tensors
        a, p, dropped = qkv.numpy(), probs.numpy(), dropped.numpy()
        B, S, _, N, D = a.shape
        scale = np.float32(1.0 / math.sqrt(D))
        k, v = a[:, :, 1].transpose(0, 2, 1, 3), a[:, :, 2].transpose(0, 2, 1, 3)
        g = d_context.contiguous().numpy().reshape(B, S, N, D).transpose(0, 2, 1, 3)  # [B, N, S, D]
        grad = np.empty_like(a)                                                  # [B, S, 3, N, D]
        gq, gk, gv = (grad[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        np.matmul(dropped.transpose(0, 1, 3, 2), g, out=gv)                     # dV
        dp = np.matmul(g, v.transpose(0, 1, 3, 2))                              # [B, N, S, S]
        dp *= keep.numpy()
        if d_probs is not None:
            dp += d_probs.contiguous().numpy()
        dp -= np.multiply(dp, p).sum(axis=-1, keepdims=True)
        dp *= p                                                                  # dS
        np.matmul(dp, k, out=gq)
        gq *= scale                                                              # dQ
        q = np.multiply(a[:, :, 0], scale).transpose(0, 2, 1, 3)
        np.matmul(dp.transpose(0, 1, 3, 2), q, out=gk)                         # dK
        return flow.from_numpy(grad), None, None


def self_attention(qkv, mask_bias, keep):
    """qkv float32 [B, S, 3, N, D], mask_bias [B, 1, 1, S], keep [B, N, S, S] (scaled dropout mask)
    -> context float32 [B, S, N * D], probabilities [B, N, S, S]; see _CpuAttentionCore."""
    return _CpuAttentionCore.apply(qkv.contiguous(), mask_bias.contiguous(), keep)
