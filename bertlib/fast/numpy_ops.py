"""NumPy working directly on the memory of eager CPU tensors: Linear layers, GELU, dropout masks,
the attention core, LayerNorm at prediction.

``tensor.numpy()`` of a local CPU tensor and ``flow.from_numpy(array)`` share memory, so NumPy can
compute on OneFlow tensors without copies. That only holds eagerly and on the CPU: inside
``nn.Graph``, for global tensors and on CUDA, :mod:`bertlib.fast.layers` and
:mod:`bertlib.fast.bert` use OneFlow ops instead (``eager_on_cpu`` decides).

Why NumPy here:

* OneFlow's CPU dropout draws its mask one scalar at a time; NumPy's PCG64 fills float32 uniforms
  several times faster (:class:`DropoutStream`);
* OneFlow's batched matmul needs contiguous [B, N, S, D] operands, so splitting the heads costs
  permute copies in both passes, and it runs these small per-head products well below its large
  matmul speed. NumPy's matmul reads the heads in place as strided views and writes results and
  gradients straight into their final layout (:class:`_AttentionCore`);
* NumPy's OpenBLAS knows newer CPUs than OneFlow's (:class:`_Linear`), and its float32 ``exp`` is
  a SIMD kernel where OneFlow's is a scalar loop (:func:`_gelu_pieces`).

The price: ``tensor.numpy()`` waits until OneFlow has run everything queued before it. Alone on a
core that costs ~0.07 ms; with one process per core, all cores busy, ~2 ms (the VM's thread must
be scheduled). So an op earns a NumPy form only when it saves more than that, per call.

Shape legend: B batch, S sequence length, N heads, D head size.
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime import import_oneflow
from . import oneflow_ops as ops

flow = import_oneflow()


# --------------------------------------------------------------------------------------- dropout
class DropoutStream:
    """The NumPy random stream behind one dropout layer's CPU masks.

    The stream is a pure function of the layer's OneFlow generator seed and the number of masks
    drawn since that seed was set, so ``generator.manual_seed`` (what bertlib's trainer does at
    every step for exact resumption) still decides every mask. Reading the seed is a cheap
    attribute read; drawing the uniforms from the OneFlow generator itself would cost more than the
    mask.
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


def dropout_keep(p: float, generator, stream: DropoutStream, shape) -> np.ndarray:
    """bool array of ``shape``: True (kept) with probability 1 - p. A bool mask is a quarter of a
    float32 one; the attention core keeps it for the backward pass (BERT-base, batch 8: 1.6 MB
    instead of 6.3 MB per layer)."""
    u = stream.uniform(generator, tuple(shape))
    return np.less(u, np.float32(1.0 - p))


def dropout_scale(p: float) -> np.float32:
    """1 / (1 - p), the factor inverted dropout scales the kept elements by."""
    return np.float32(1.0 / (1.0 - p))


def dropout_mask(p: float, generator, stream: DropoutStream, shape) -> np.ndarray:
    """float32 array of ``shape``: 1 / (1 - p) with probability 1 - p, else 0 (a scaled Bernoulli
    mask; the same draws as :func:`dropout_keep`)."""
    return np.multiply(dropout_keep(p, generator, stream, shape), dropout_scale(p), dtype=np.float32)


# ---------------------------------------------------------------------------------------- linear
class _Linear(flow.autograd.Function):
    """y = x W^T + b for x float32 [M, in], W [out, in], b [out], with NumPy's matmul.

    NumPy's OpenBLAS is a newer build than the one linked into OneFlow 0.9 and knows newer CPUs:
    where OneFlow's falls back to generic kernels (or its AVX2 ones on AVX-512 machines) NumPy's
    sgemm is up to twice as fast (bench/op_profile.py). Backward: dx = dy W, dW = dy^T x,
    db = column sums of dy.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        y = np.matmul(x.numpy(), weight.numpy().T)                              # [M, out]
        if bias is not None:
            y += bias.numpy()
        ctx.save_for_backward(x, weight)
        return flow.from_numpy(y)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        g = dy.contiguous().numpy()                                              # [M, out]
        dx = np.matmul(g, weight.numpy())                                        # [M, in]
        dweight = np.matmul(g.T, x.numpy())                                      # [out, in]
        dbias = g.sum(axis=0)                                                    # [out]
        return flow.from_numpy(dx), flow.from_numpy(dweight), flow.from_numpy(dbias)


def linear(x, weight, bias):
    """x float32 [..., in] (eager, CPU); weight [out, in]; bias [out] -> x W^T + b, [..., out]."""
    shape = x.shape
    y = _Linear.apply(x.contiguous().reshape(-1, shape[-1]), weight, bias)      # [M, out]
    return y.reshape(*shape[:-1], weight.shape[0])                             # [..., out]


class _StackedLinear(flow.autograd.Function):
    """y = x [Wq; Wk; Wv]^T + [bq; bk; bv] for x float32 [M, in] and three layers' W [out, in],
    b [out]: one matmul for the three, as if their weights were one [3 out, in] matrix.

    The stacked matrix exists only while a matmul needs it, in the forward and again in the
    backward; what the backward keeps is x and the layers' own weights. (Stacking them with
    ``flow.cat`` before a linear would keep the stacked copy from forward to backward: 7 MB per
    BERT-base layer, 85 MB for the model.) The weight gradients come back as three row blocks of one
    [3 out, in] product.
    """

    @staticmethod
    def forward(ctx, x, wq, wk, wv, bq, bk, bv):
        weight = np.concatenate([wq.numpy(), wk.numpy(), wv.numpy()])           # [3 out, in]
        y = np.matmul(x.numpy(), weight.T)                                       # [M, 3 out]
        y += np.concatenate([bq.numpy(), bk.numpy(), bv.numpy()])
        ctx.save_for_backward(x, wq, wk, wv)
        return flow.from_numpy(y)

    @staticmethod
    def backward(ctx, dy):
        x, wq, wk, wv = ctx.saved_tensors
        g = dy.contiguous().numpy()                                              # [M, 3 out]
        weight = np.concatenate([wq.numpy(), wk.numpy(), wv.numpy()])           # [3 out, in]
        dx = np.matmul(g, weight)                                                # [M, in]
        dweight = np.split(np.matmul(g.T, x.numpy()), 3)                        # 3 x [out, in]
        dbias = np.split(g.sum(axis=0), 3)                                       # 3 x [out]
        return (flow.from_numpy(dx), *(flow.from_numpy(w) for w in dweight),
                *(flow.from_numpy(b) for b in dbias))


def stacked_linear(x, layers):
    """x float32 [..., in] (eager, CPU); ``layers`` three nn.Linear(in, out) with biases ->
    their outputs side by side, float32 [..., 3 out] (see :class:`_StackedLinear`)."""
    shape = x.shape
    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    y = _StackedLinear.apply(x.contiguous().reshape(-1, shape[-1]), *weights, *biases)  # [M, 3 out]
    return y.reshape(*shape[:-1], 3 * weights[0].shape[0])                              # [..., 3 out]


# ---------------------------------------------------------------------------------- layer norm
_LN_ROWS = 256   # rows per piece: a [256, H] piece and its statistics stay in the core's cache


def layer_norm_inference(x, weight, bias, eps: float):
    """x float32 [..., H] (eager, CPU, no gradient to come); weight, bias [H] ->
    (x - mean) / sqrt(var + eps) * weight + bias, [..., H].

    The statistics are two-pass, as in the training formulation, over pieces of ``_LN_ROWS`` rows
    that stay in cache between the passes: at prediction the whole of LayerNorm is these five
    passes over each piece, with nothing to keep for a backward pass.
    """
    a = x.contiguous().numpy()
    H = a.shape[-1]
    rows = a.reshape(-1, H)                                                      # [M, H]
    out = np.empty_like(rows)
    w, b = weight.numpy(), bias.numpy()
    inv_h = np.float32(1.0 / H)
    for i in range(0, rows.shape[0], _LN_ROWS):
        piece, o = rows[i:i + _LN_ROWS], out[i:i + _LN_ROWS]                    # [m, H]
        mean = piece.sum(axis=1, keepdims=True)
        mean *= inv_h                                                            # [m, 1]
        np.subtract(piece, mean, out=o)                                          # centred
        var = np.einsum("ij,ij->i", o, o)[:, None]
        var *= inv_h
        var += np.float32(eps)
        np.sqrt(var, out=var)
        np.divide(np.float32(1.0), var, out=var)                                 # 1 / std, [m, 1]
        o *= var
        o *= w
        o += b
    return flow.from_numpy(out.reshape(a.shape))


# ------------------------------------------------------------------------------------------ GELU
_GELU_ROWS_FLOATS = 64 * 1024   # floats per piece: a piece and its four scratch rows stay in L2


def _gelu_pieces(a, y, slope=None):
    """GELU(a) into y (and its derivative into slope), a float32 [M, K], over row pieces.

    The formulation of :class:`bertlib.fast.oneflow_ops._Gelu` (Phi through the fitted erfc
    polynomial and one exponential), evaluated in place on cache-sized pieces with NumPy's
    vectorised ufuncs. NumPy's float32 ``exp`` is a SIMD kernel where OneFlow's is a scalar libm
    loop, and the in-place chain writes no temporaries: each piece is read from memory once.
    """
    M, K = a.shape
    rows = max(1, _GELU_ROWS_FLOATS // K)
    c = np.float32(0.5 * math.sqrt(2.0 * math.pi))              # folded into the coefficients
    coefs = [np.float32(r * c) for r in ops._ERFC_R]
    scratch = np.empty((3, rows, K), np.float32)
    for i in range(0, M, rows):
        x = a[i:i + rows]
        m = x.shape[0]
        t, acc, pdf = scratch[0, :m], scratch[1, :m], scratch[2, :m]
        np.abs(x, out=t)
        t *= np.float32(ops._ERFC_P / math.sqrt(2.0))
        t += np.float32(1.0)
        np.reciprocal(t, out=t)                                  # t = 1 / (1 + p |x| / sqrt 2)
        np.multiply(t, coefs[-1], out=acc)
        for coef in reversed(coefs[:-1]):                        # Horner: t R(t) sqrt(2 pi) / 2
            acc += coef
            acc *= t
        np.square(x, out=pdf)
        pdf *= np.float32(-0.5)
        np.exp(pdf, out=pdf)
        pdf *= np.float32(1.0 / math.sqrt(2.0 * math.pi))        # phi(x)
        acc *= pdf                                               # q = Phi(-|x|)
        # Phi(x) = h - sign(x) q, h = 1, 1/2, 0 for x >, =, < 0: exactly q in the negative tail.
        # (Not np.subtract(1, q, where=x > 0): NumPy's masked loops are ~60x slower.)
        sign = np.sign(x, out=t)
        acc *= sign
        sign += np.float32(1.0)
        sign *= np.float32(0.5)                                  # h
        np.subtract(sign, acc, out=acc)                          # Phi(x)
        np.multiply(x, acc, out=y[i:i + rows])                   # x Phi(x)
        if slope is not None:
            s = slope[i:i + rows]
            np.multiply(x, pdf, out=s)
            s += acc                                             # Phi(x) + x phi(x)


class _Gelu(flow.autograd.Function):
    """GELU on x float32 [M, K]; the forward forms the derivative too and keeps only it, so the
    backward is one product (see :func:`_gelu_pieces`)."""

    @staticmethod
    def forward(ctx, x):
        # the outputs are OneFlow's memory that NumPy writes into (not NumPy's memory handed to
        # OneFlow): a step then reuses OneFlow's freed blocks, and peak RSS stays lower
        y = flow.empty(*x.shape, dtype=x.dtype, device=x.device)
        slope = flow.empty(*x.shape, dtype=x.dtype, device=x.device)
        _gelu_pieces(x.numpy(), y.numpy(), slope.numpy())
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    def backward(ctx, dy):
        (slope,) = ctx.saved_tensors
        return flow.from_numpy(np.multiply(dy.contiguous().numpy(), slope.numpy()))


def gelu(x):
    """Exact GELU x Phi(x), x float32 [..., K] (eager, CPU), differentiable."""
    shape = x.shape
    return _Gelu.apply(x.contiguous().reshape(-1, shape[-1])).reshape(shape)


def gelu_inference(x):
    """Exact GELU x Phi(x), x float32 [..., K] (eager, CPU, no gradient to come)."""
    a = x.contiguous().numpy()
    y = np.empty_like(a)
    _gelu_pieces(a.reshape(-1, a.shape[-1]), y.reshape(-1, a.shape[-1]))
    return flow.from_numpy(y)


# ------------------------------------------------------------------------------ self-attention
class _AttentionCore(flow.autograd.Function):
    """softmax(Q K^T / sqrt(D) + mask_bias), dropout, times V, for every head, with NumPy's matmul.

    Inputs: qkv float32 [B, S, 3, N, D] (the fused projection, contiguous), mask_bias float32
    [B, 1, 1, S], keep uint8 [B, N, S, S] (1 where dropout keeps a probability) and the dropout
    scale 1 / (1 - p) as a float32 0-d tensor; or a 0-d ``keep`` for no dropout (eval mode,
    prediction): then no [B, N, S, S] mask is made or multiplied.
    Outputs: context float32 [B, S, N * D] and the probabilities float32 [B, N, S, S] (pre-dropout).

    NumPy's matmul reads Q, K, V in place as strided views of qkv (each [S, D] head is a BLAS
    matrix with leading dimension 3 N D), writes the context straight into [B, S, N, D] order and
    the gradients straight into their slots of d qkv. The softmax stays OneFlow's (vectorised exp).
    Backward, with P the probabilities, M = keep * scale, P' = P * M and G = d context:
        dV = P'^T G,  dP = (G V^T) * M + d probs,  dS = P * (dP - rowsum(dP * P)),
        dQ = dS K / sqrt(D),  dK = dS^T Q / sqrt(D).
    The backward keeps P and the uint8 mask, and forms P' again when it needs it: keeping P' and a
    float32 mask as well would hold three [B, N, S, S] float32 tensors per layer instead of 1.25.
    """

    @staticmethod
    def forward(ctx, qkv, mask_bias, keep, keep_scale):
        a = qkv.numpy()                                                          # [B, S, 3, N, D]
        B, S, _, N, D = a.shape
        scale = np.float32(1.0 / math.sqrt(D))
        q = np.multiply(a[:, :, 0], scale).transpose(0, 2, 1, 3)                # [B, N, S, D], scaled
        k, v = a[:, :, 1].transpose(0, 2, 1, 3), a[:, :, 2].transpose(0, 2, 1, 3)
        scores = np.matmul(q, k.transpose(0, 1, 3, 2))                          # [B, N, S, S]
        scores += mask_bias.numpy()                                             # [B, 1, 1, S] rows
        probs = flow.softmax(flow.from_numpy(scores), dim=-1)                   # [B, N, S, S]
        del scores
        context = np.empty((B, S, N, D), np.float32)
        np.matmul(_dropped(probs, keep, keep_scale), v, out=context.transpose(0, 2, 1, 3))  # heads merged
        ctx.save_for_backward(qkv, probs, keep, keep_scale)
        return flow.from_numpy(context.reshape(B, S, N * D)), probs

    @staticmethod
    def backward(ctx, d_context, d_probs):
        qkv, probs, keep, keep_scale = ctx.saved_tensors
        a, p = qkv.numpy(), probs.numpy()
        B, S, _, N, D = a.shape
        scale = np.float32(1.0 / math.sqrt(D))
        k, v = a[:, :, 1].transpose(0, 2, 1, 3), a[:, :, 2].transpose(0, 2, 1, 3)
        g = d_context.contiguous().numpy().reshape(B, S, N, D).transpose(0, 2, 1, 3)  # [B, N, S, D]
        grad = np.empty_like(a)                                                  # [B, S, 3, N, D]
        gq, gk, gv = (grad[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
        np.matmul(_dropped(probs, keep, keep_scale).transpose(0, 1, 3, 2), g, out=gv)   # dV
        dp = np.matmul(g, v.transpose(0, 1, 3, 2))                              # [B, N, S, S]
        if keep.ndim > 0:
            dp *= keep.numpy()
            dp *= keep_scale.numpy()
        if d_probs is not None:
            dp += d_probs.contiguous().numpy()
        dp -= np.multiply(dp, p).sum(axis=-1, keepdims=True)
        dp *= p                                                                  # dS
        np.matmul(dp, k, out=gq)
        gq *= scale                                                              # dQ
        q = np.multiply(a[:, :, 0], scale).transpose(0, 2, 1, 3)
        np.matmul(dp.transpose(0, 1, 3, 2), q, out=gk)                         # dK
        return flow.from_numpy(grad), None, None, None


def _dropped(probs, keep, keep_scale) -> np.ndarray:
    """P' = P * keep * scale, float32 [B, N, S, S] (P itself when there is no dropout)."""
    if keep.ndim == 0:
        return probs.numpy()
    out = np.multiply(probs.numpy(), keep.numpy())
    out *= keep_scale.numpy()
    return out


def attention_inference(qkv, mask_bias):
    """The attention core for prediction (no dropout, no gradient), one example at a time.

    qkv float32 [B, S, 3, N, D] (eager, CPU), mask_bias float32 [B, 1, 1, S] -> context float32
    [B, S, N * D]; the same maths as :class:`_AttentionCore`'s forward. Only one example's
    [N, S, S] scores exist at a time (7 MB at S = 384 for 12 heads) instead of the batch's (453 MB
    at batch 64): nothing is kept for a backward pass, so the scores of an example can be dropped
    as soon as its context is written, and they stay in the CPU's caches meanwhile.
    """
    a = qkv.numpy()                                                              # [B, S, 3, N, D]
    B, S, _, N, D = a.shape
    bias = mask_bias.numpy()                                                     # [B, 1, 1, S]
    scale = np.float32(1.0 / math.sqrt(D))
    context = np.empty((B, S, N, D), np.float32)
    scores = np.empty((N, S, S), np.float32)
    for b in range(B):
        q = np.multiply(a[b, :, 0], scale).transpose(1, 0, 2)                  # [N, S, D], scaled
        k, v = a[b, :, 1].transpose(1, 0, 2), a[b, :, 2].transpose(1, 0, 2)      # [N, S, D] views
        np.matmul(q, k.transpose(0, 2, 1), out=scores)                           # [N, S, S]
        scores += bias[b]                                                        # [1, 1, S]
        probs = flow.softmax(flow.from_numpy(scores), dim=-1).numpy()            # [N, S, S]
        np.matmul(probs, v, out=context[b].transpose(1, 0, 2))                   # [S, N, D] in place
    return flow.from_numpy(context.reshape(B, S, N * D))


def self_attention(qkv, mask_bias, keep=None, p: float = 0.0):
    """qkv float32 [B, S, 3, N, D], mask_bias [B, 1, 1, S], keep bool [B, N, S, S] (where dropout
    of rate ``p`` keeps a probability, from :func:`dropout_keep`) or None (no dropout) -> context
    float32 [B, S, N * D], probabilities [B, N, S, S]; see _AttentionCore."""
    if keep is None:   # 0-d: "no dropout" (autograd.Function inputs must be tensors)
        keep, keep_scale = flow.ones(()), flow.ones(())
    else:
        keep, keep_scale = flow.from_numpy(keep.view(np.uint8)), flow.tensor(dropout_scale(p))
    return _AttentionCore.apply(qkv.contiguous(), mask_bias.contiguous(), keep, keep_scale)
