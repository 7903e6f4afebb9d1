"""BERT's element-wise and normalisation ops rebuilt from the OneFlow ops that are fast on a CPU.

Every function computes exactly the textbook definition (tests/test_fast.py checks values and
gradients against OneFlow's built-ins, tests/test_model.py the whole model against Hugging Face).
They are ``autograd.Function``s made only of OneFlow ops, so they run eagerly, inside ``nn.Graph``
(traced like any other op) and on any device.

Why they exist: OneFlow 0.9's CPU kernels are single-threaded and of very uneven quality. Matrix
products run at BLAS speed and flat element-wise arithmetic is vectorised, but:

* broadcasting a *column*, ``x[M, H] - m[M, 1]``, is ~60x slower than a flat op, and so is its
  backward (a sum over the last axis). ``m @ ones[1, H]`` builds the same [M, H] operand with a K=1
  matmul in a flat op's time, and row sums are likewise ``x @ ones[H, 1]``: :func:`_spread`,
  :func:`_row_sum`, :func:`_row_mean`, :func:`_column_sum`. LayerNorm is written with them;
* ``erf`` / ``exp`` / ``tanh`` / ``sqrt`` are scalar libm loops, and the built-in GELU's backward
  kernel is slower than its forward: GELU is written with one exponential taken from the
  (vectorised) softmax kernel;
* ``log_softmax``'s backward kernel is ~10x slower than its forward, and linear's bias gradient goes
  through the slow column-sum kernel: their backwards are written with matmuls.

bench/RESULTS.md has the measured cost of each op against the built-in at BERT-base's shapes.

Shapes: M rows (all leading axes flattened), H or K features per row, C classes.
"""
from __future__ import annotations

import math

from ..runtime import import_oneflow

flow = import_oneflow()
F = flow.nn.functional

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------- where they apply
def on_cpu(x) -> bool:
    """True when ``x`` (local or global, eager or traced in a graph) lives on the CPU."""
    if x.is_global:
        return x.placement.type == "cpu"
    return x.device.type == "cpu"


def eager_on_cpu(x) -> bool:
    """True for a local CPU tensor outside nn.Graph: where NumPy can work on the tensor's memory."""
    return not x.is_lazy and not x.is_global and on_cpu(x)


def needs_grad(x) -> bool:
    """True when autograd may differentiate through ``x``: grad mode on and ``x`` requires grad,
    or ``x`` is traced in nn.Graph (where that is decided later). When not (prediction under
    no_grad), the forward-only formulations apply."""
    return x.is_lazy or (flow.is_grad_enabled() and x.requires_grad)


def applies(kernels: str, x) -> bool:
    """Whether ``BertConfig.kernels`` asks for bertlib.fast's formulations on tensor ``x``.

    "auto": for CPU tensors (eager or in a graph), OneFlow's own kernels on CUDA, where they are the
    fast ones; "fast": on every device; "reference": never.
    """
    if kernels == "auto":
        return on_cpu(x)
    return kernels == "fast"


# ------------------------------------------------------------------------- matmul reductions
_CONSTANTS = {}


def _const(shape, value: float, like):
    """A float tensor filled with ``value`` on ``like``'s device (placement, broadcast, if global).

    Eager constants are cached (building one costs more Python time than the small matmul it feeds,
    and a step asks a few hundred times); inside a graph they are traced as constant ops.
    """
    shape = tuple(int(s) for s in shape)
    if like.is_lazy:
        return _new_const(shape, value, like)
    where = (str(like.placement), len(like.sbp)) if like.is_global else str(like.device)
    key = (shape, value, like.dtype, where)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        if len(_CONSTANTS) > 256:   # shapes change with batch size; keep the cache bounded
            _CONSTANTS.clear()
        tensor = _CONSTANTS[key] = _new_const(shape, value, like)
    return tensor


def _new_const(shape, value: float, like):
    if like.is_global:
        return flow._C.global_constant(shape, value, dtype=like.dtype, placement=like.placement,
                                       sbp=[flow.sbp.broadcast] * len(like.sbp))
    return flow._C.constant(shape, value, dtype=like.dtype, device=like.device)


def _row_mean(x):
    """x [M, H] -> [M, 1] mean of each row, as a matmul with a column of 1/H."""
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
class _Linear(flow.autograd.Function):
    """y = x W^T + b for x [M, in], W [out, in], b [out] (the built-in forward).

    The backward is three matmuls: dx = dy W, dW = dy^T x, db = ones[1, M] dy; the built-in one
    reduces the bias gradient with the slow column-sum kernel.
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
    if bias is None:
        return F.linear(x, weight, bias)
    shape = x.shape
    y = _Linear.apply(x.reshape(-1, shape[-1]), weight, bias)
    return y.reshape(*shape[:-1], weight.shape[0])


# ------------------------------------------------------------------------------------ layer norm
class _LayerNorm(flow.autograd.Function):
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


def _layer_norm_fn(eps: float):
    fn = _LAYER_NORMS.get(eps)
    if fn is None:
        fn = _LAYER_NORMS[eps] = type(f"_LayerNorm_{eps:g}", (_LayerNorm,), {"eps": eps})
    return fn


def layer_norm(x, weight, bias, eps: float):
    """x float32 [..., H]; weight, bias float32 [H] -> (x - mean) / sqrt(var + eps) * weight + bias."""
    shape = x.shape
    y = _layer_norm_fn(eps).apply(x.reshape(-1, shape[-1]), weight, bias)
    return y.reshape(shape)


# ------------------------------------------------------------------------------------------ GELU
def _exp_of_nonpositive_rows(u, scale: float = 1.0):
    """scale * exp(u) for u <= 0, float32 [M, K], through OneFlow's vectorised softmax kernel.

    ``flow.exp`` is a scalar libm loop on the CPU; the softmax kernel evaluates exp vectorised.
    Softmax over each row with a 0 appended, [u_1 .. u_K, 0], gives exp(u_i) / Z and 1 / Z
    (Z = 1 + sum exp(u_j) <= K + 1, no overflow since u <= 0), so exp(u_i) is their ratio: a few
    ulp from the libm value, at half its cost.
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
# operands of a chain of ops stay in the last-level cache, which made GELU's forward markedly
# faster (bench/RESULTS.md).
_CHUNK_FLOATS = 128 * 3072


def _row_chunks(x):
    """Split x [M, K] along rows into pieces of about _CHUNK_FLOATS elements (views, no copy)."""
    rows = max(1, _CHUNK_FLOATS // x.shape[1])
    return [x] if x.shape[0] <= rows else list(flow.split(x, rows, dim=0))


def _gelu_and_slope(x):
    """x [m, K] -> (GELU(x), dGELU/dx), both [m, K]; see _Gelu."""
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
    # OneFlow's CPU comparison with a scalar is two orders of magnitude slower than sign.)
    sign = flow.sign(x)
    cdf = (sign * 0.5 + 0.5) - sign * q                                     # Phi(x)
    return x * cdf, cdf + x * pdf


class _Gelu(flow.autograd.Function):
    """GELU(x) = x Phi(x) on rows x [M, K]; dGELU/dx = Phi(x) + x phi(x).

    OneFlow's CPU erf and its GELU backward kernel cost tens of times a flat op. So Phi is written
    with one exponential, shared with the derivative:
        q = erfc(|x| / sqrt 2) / 2 = t R(t) phi(x) sqrt(2 pi) / 2,   Phi(x) = q for x < 0, 1 - q else,
    with phi(x) = exp(-x^2 / 2) / sqrt(2 pi) from :func:`_exp_of_nonpositive_rows`, evaluated on
    cache-sized row pieces. The forward also forms the derivative and keeps only it, so the
    backward is one product (and one [M, K] tensor is saved instead of three). Error against a
    float64 reference at float32 rounding level, as the built-in's, with relative accuracy kept in
    the negative tail (tests/test_fast.py).
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
    """Exact GELU: x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))), x float32 [..., K]."""
    shape = x.shape
    return _Gelu.apply(x.reshape(-1, shape[-1])).reshape(shape)


# ------------------------------------------------------------------------------ softmax family
def softmax(x):
    """Softmax over the last axis: OneFlow's own kernel, whose CPU forward is vectorised and whose
    backward beat the matmul-reduction backward we tried."""
    return flow.softmax(x, dim=-1)


class _LogSoftmax(flow.autograd.Function):
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


def log_softmax(x):
    """Log-softmax over the last axis."""
    return _LogSoftmax.apply(x)


class _CrossEntropy(flow.autograd.Function):
    """Per-row cross-entropy -log softmax(logits)[label] for logits [M, C], labels int64 [M].

    Forward: the built-in (fast) log-softmax and a gather, plus the softmax kept for the backward.
    Backward: dlogits = g * (softmax - onehot): the softmax scaled per row by a K=1 matmul, then g
    subtracted at the labels in place. Autograd through log_softmax + gather would first write a
    dense one-hot gradient and run log-softmax's slow backward kernel.
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
    return _CrossEntropy.apply(logits, labels)


# ------------------------------------------------------------------------------ self-attention
def self_attention(qkv, mask_bias, dropout):
    """The attention core on the fused projection, with OneFlow ops (nn.Graph and CUDA).

    qkv float32 [B, S, 3, N, D]; mask_bias float32 [B, 1, 1, S]; dropout: the probabilities'
    dropout module. Returns context float32 [B, S, N * D] and probabilities float32 [B, N, S, S].
    """
    B, S, _, N, D = qkv.shape
    qkv = qkv.permute(2, 0, 3, 1, 4)                                          # [3, B, N, S, D]
    # unbind, not qkv[0], qkv[1], qkv[2]: three index ops would each write a full-size
    # [3, B, N, S, D] gradient in the backward pass; unbind's backward is one stack.
    q, k, v = flow.unbind(qkv, 0)                                             # [B, N, S, D] each
    # K^T and the 1/sqrt(D) scale folded into the matmul: no transposed copy, no extra pass
    scores = flow._C.matmul(q, k, transpose_a=False, transpose_b=True,
                            alpha=1.0 / math.sqrt(D))                         # [B, N, S, S]
    probs = softmax(scores + mask_bias)                                       # [B, N, S, S]
    context = flow.matmul(dropout(probs), v)                                  # [B, N, S, D]
    context = context.permute(0, 2, 1, 3).reshape(B, S, N * D)                # [B, S, N * D]
    return context, probs
