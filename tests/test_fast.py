"""bertlib.fast against OneFlow's built-in ops: values and gradients, eager and graph.

The Hugging Face parity test (test_model.py) checks the forward pass of the whole model on both
paths; the backward passes of the hand-written autograd Functions are checked here, op by op,
against the built-ins they replace, and once more through a full pre-training step of a small BERT
built with ``kernels="fast"`` against the same model built with ``kernels="reference"``.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bertlib import fast
from bertlib.config import BertConfig
from bertlib.fast import numpy_ops, oneflow_ops as ops
from bertlib.model import BertForPreTraining, flow, pretraining_loss, reseed_dropout

F = flow.nn.functional
RNG = np.random.RandomState(0)


def _run(fn, arrays, grad_out):
    """fn(*tensors) -> (output, [grads of every input]) for upstream gradient grad_out."""
    tensors = [flow.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*tensors)
    out.backward(flow.tensor(grad_out))
    return out.numpy(), [t.grad.numpy() for t in tensors]


def _close(ours, theirs, atol, rtol=1e-5):
    ours_out, ours_grads = ours
    ref_out, ref_grads = theirs
    np.testing.assert_allclose(ours_out, ref_out, atol=atol, rtol=rtol)
    for a, b in zip(ours_grads, ref_grads):
        # parameter gradients sum over every row: allow for the different summation order
        np.testing.assert_allclose(a, b, atol=atol * max(1.0, np.sqrt(a.size / a.shape[-1])), rtol=rtol)


@pytest.mark.parametrize("shape", [(6, 32), (2, 5, 48)])
def test_layer_norm_matches_builtin(shape):
    H = shape[-1]
    x = (RNG.randn(*shape) * 3 + 1).astype(np.float32)
    w, b = RNG.randn(H).astype(np.float32), RNG.randn(H).astype(np.float32)
    g = RNG.randn(*shape).astype(np.float32)
    ours = _run(lambda x, w, b: ops.layer_norm(x, w, b, 1e-12), [x, w, b], g)
    theirs = _run(lambda x, w, b: F.layer_norm(x, (H,), w, b, 1e-12), [x, w, b], g)
    _close(ours, theirs, atol=2e-5)


def test_layer_norm_eps_is_used():
    x = np.zeros((2, 8), np.float32)
    x[:, 0] = 1e-3   # variance ~1e-7: eps 1e-5 dominates it, eps 1e-12 does not
    w, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    for eps in (1e-12, 1e-5):
        ours = _run(lambda x, w, b: ops.layer_norm(x, w, b, eps), [x, w, b], np.ones_like(x))
        theirs = _run(lambda x, w, b: F.layer_norm(x, (8,), w, b, eps), [x, w, b], np.ones_like(x))
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4, rtol=1e-4)


def test_gelu_matches_builtin_over_a_wide_range():
    x = np.concatenate([np.linspace(-12, 12, 1001), RNG.randn(999) * 3]).astype(np.float32).reshape(40, 50)
    g = RNG.randn(40, 50).astype(np.float32)
    _close(_run(ops.gelu, [x], g), _run(F.gelu, [x], g), atol=1e-6)


@pytest.mark.parametrize("gelu", [ops.gelu, numpy_ops.gelu], ids=["oneflow_ops", "numpy_ops"])
def test_gelu_against_float64_erf(gelu):
    import math

    x = np.linspace(-9, 9, 3601).astype(np.float32).reshape(13, 277)
    g = RNG.randn(*x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    cdf = 0.5 * np.vectorize(math.erfc)(-x64 / math.sqrt(2.0))
    pdf = np.exp(-x64 ** 2 / 2) / math.sqrt(2 * math.pi)
    y, (dx,) = _run(gelu, [x], g)
    assert np.abs(y - x64 * cdf).max() <= 1e-6
    assert np.abs(dx - g * (cdf + x64 * pdf)).max() <= 2e-6
    # the negative tail, where 1 + erf cancels in the textbook formula, keeps its relative accuracy
    tail = (x64 < -3) & (x64 > -8)
    assert (np.abs(y - x64 * cdf)[tail] / np.abs(x64 * cdf)[tail]).max() <= 1e-5


def test_numpy_gelu_matches_builtin_across_pieces():
    """Rows longer than one piece, a row count that does not divide into pieces, a 3-D input;
    and the forward-only form gives the same values."""
    x = (RNG.randn(3, 700, 160) * 3).astype(np.float32)
    g = RNG.randn(*x.shape).astype(np.float32)
    ours = _run(numpy_ops.gelu, [x], g)
    _close(ours, _run(F.gelu, [x], g), atol=1e-6)
    with flow.no_grad():
        np.testing.assert_array_equal(numpy_ops.gelu_inference(flow.tensor(x)).numpy(), ours[0])


def test_softmax_matches_builtin():
    x = (RNG.randn(3, 4, 7, 7) * 4).astype(np.float32)
    x[..., -2:] -= 10000.0   # masked keys, as the attention mask adds
    g = RNG.randn(*x.shape).astype(np.float32)
    _close(_run(ops.softmax, [x], g), _run(lambda t: flow.softmax(t, dim=-1), [x], g), atol=1e-6)


def test_log_softmax_matches_builtin():
    x = (RNG.randn(6, 301) * 5).astype(np.float32)
    g = RNG.randn(*x.shape).astype(np.float32)
    _close(_run(ops.log_softmax, [x], g), _run(lambda t: flow.log_softmax(t, dim=-1), [x], g),
           atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24)])
def test_linear_matches_builtin(shape):
    x = RNG.randn(*shape).astype(np.float32)
    w, b = RNG.randn(10, 24).astype(np.float32), RNG.randn(10).astype(np.float32)
    g = RNG.randn(*shape[:-1], 10).astype(np.float32)
    _close(_run(ops.linear, [x, w, b], g), _run(F.linear, [x, w, b], g), atol=1e-5)


def test_stacked_linear_matches_three_linears():
    """Q, K and V in one matmul: the three outputs side by side, and each layer's own gradients."""
    x = RNG.randn(2, 5, 24).astype(np.float32)
    ws = [RNG.randn(16, 24).astype(np.float32) for _ in range(3)]
    bs = [RNG.randn(16).astype(np.float32) for _ in range(3)]
    g = RNG.randn(2, 5, 48).astype(np.float32)

    def stacked(x, wq, wk, wv, bq, bk, bv):
        # stand-ins for three nn.Linear holding the test's tensors, so that their grads are seen
        layers = [SimpleNamespace(weight=w, bias=b) for w, b in ((wq, bq), (wk, bk), (wv, bv))]
        return numpy_ops.stacked_linear(x, layers)

    def separate(x, wq, wk, wv, bq, bk, bv):
        return flow.cat([F.linear(x, w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv))], dim=-1)

    _close(_run(stacked, [x, *ws, *bs], g), _run(separate, [x, *ws, *bs], g), atol=1e-5)


def test_cross_entropy_matches_builtin():
    x = (RNG.randn(9, 301) * 5).astype(np.float32)
    labels = RNG.randint(0, 301, 9)
    labels[3] = labels[4]          # a repeated label must not confuse the scatter
    g = RNG.randn(9).astype(np.float32)

    def reference(t):
        return -flow.gather(flow.log_softmax(t, dim=-1), 1, flow.tensor(labels).unsqueeze(1)).squeeze(1)

    ours = _run(lambda t: ops.cross_entropy(t, flow.tensor(labels)), [x], g)
    _close(ours, _run(reference, [x], g), atol=1e-5)


def _pretraining_step_grads(kernels, seed=0):
    """Loss and every parameter gradient of one pre-training step of a small BERT, dropout off."""
    flow.manual_seed(seed)
    cfg = BertConfig.tiny(vocab_size=300, num_hidden_layers=2, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, kernels=kernels)
    model = BertForPreTraining(cfg)
    rng = np.random.RandomState(seed)
    B, S, P = 3, 16, 4
    ids = flow.tensor(rng.randint(0, 300, (B, S)), dtype=flow.int64)
    types = flow.tensor((np.arange(S) >= 8)[None].repeat(B, 0), dtype=flow.int64)
    mask = np.ones((B, S), np.int64)
    mask[0, -3:] = 0
    mask = flow.tensor(mask)
    pos = flow.tensor(np.stack([rng.choice(np.arange(1, 13), P, replace=False) for _ in range(B)]),
                      dtype=flow.int64)
    lm_ids = flow.tensor(rng.randint(0, 300, (B, P)), dtype=flow.int64)
    weights = flow.tensor(np.array([[1, 1, 1, 0]] * B, np.float32))
    nsp = flow.tensor(rng.randint(0, 2, (B,)), dtype=flow.int64)
    out = model(ids, types, mask, pos)
    loss, _, _ = pretraining_loss(out.prediction_logits, out.seq_relationship_logits, lm_ids, weights, nsp,
                                  kernels=kernels)
    loss.backward()
    return loss.item(), {n: p.grad.numpy() for n, p in model.named_parameters()}


def test_whole_model_gradients_match_reference_path():
    loss_fast, grads_fast = _pretraining_step_grads("fast")
    loss_ref, grads_ref = _pretraining_step_grads("reference")
    assert grads_fast.keys() == grads_ref.keys()
    assert abs(loss_fast - loss_ref) <= 1e-5
    for name, ref in grads_ref.items():
        scale = max(1e-3, float(np.abs(ref).max()))
        diff = float(np.abs(grads_fast[name] - ref).max())
        assert diff <= 1e-4 * scale, f"{name}: max diff {diff:.3g} (max |grad| {scale:.3g})"


@pytest.mark.parametrize("kernels", ["auto", "fast", "reference"])
def test_kernels_switch_swaps_modules_not_parameters(kernels):
    model = BertForPreTraining(BertConfig.tiny(vocab_size=300, kernels=kernels))
    plain = BertForPreTraining(BertConfig.tiny(vocab_size=300, kernels="reference"))
    assert list(model.state_dict()) == list(plain.state_dict())
    layer = model.bert.encoder.layer[0]
    swapped = [layer.attention.self, layer.attention.output.dense, layer.attention.output.LayerNorm,
               layer.attention.output.dropout, layer.intermediate.act, model.cls.predictions]
    for module in swapped:
        assert isinstance(module, fast.layers.DropIn) == (kernels != "reference"), type(module)
        assert getattr(module, "kernels", "reference") == kernels


def test_fast_ops_work_inside_nn_graph():
    x = flow.tensor(RNG.randn(4, 6, 16).astype(np.float32))
    w = flow.nn.Parameter(flow.tensor(RNG.randn(16).astype(np.float32)))
    b = flow.nn.Parameter(flow.tensor(RNG.randn(16).astype(np.float32)))

    class Tiny(flow.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.b = w, b

        def forward(self, x):
            h = ops.gelu(ops.layer_norm(x, self.w, self.b, 1e-12))
            h = ops.linear(h, self.w.reshape(16, 1).expand(16, 16) * 0.1, self.b)
            logits = ops.log_softmax(ops.softmax(h) * 3.0).reshape(-1, 16)
            labels = flow.arange(logits.shape[0], dtype=flow.int64) % 16
            return ops.cross_entropy(logits, labels).sum()

    module = Tiny()
    eager = module(x)
    eager.backward()
    eager_grad = w.grad.numpy().copy()
    w.grad = None
    b.grad = None
    sgd = flow.optim.SGD(module.parameters(), lr=1.0)

    class Step(flow.nn.Graph):
        def __init__(self):
            super().__init__()
            self.module = module
            self.add_optimizer(sgd)

        def build(self, x):
            loss = self.module(x)
            loss.backward()
            return loss

    before = w.numpy().copy()
    graph_loss = Step()(x)
    np.testing.assert_allclose(graph_loss.numpy(), eager.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(before - w.numpy(), eager_grad, rtol=1e-4, atol=1e-5)


def Dropout(p):
    """A fresh nn.Dropout turned into bertlib.fast's, as the model's swap does."""
    return fast.Dropout.adopt(flow.nn.Dropout(p), "auto")


def test_dropout_mask_is_bernoulli_and_scaled():
    layer = Dropout(0.1)
    layer.manual_seed(7)
    x = flow.tensor(np.full((64, 12, 128), 2.0, np.float32), requires_grad=True)
    y = layer(x)
    y.backward(flow.ones_like(y))
    out = y.numpy()
    kept = out != 0
    np.testing.assert_allclose(np.unique(out), [0.0, 2.0 / 0.9], rtol=1e-6)  # dropped or scaled by 1/(1-p)
    n = kept.size
    assert abs(kept.mean() - 0.9) < 4 * np.sqrt(0.9 * 0.1 / n)             # 4 sigma of Bernoulli(0.9)
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.9, rtol=1e-6)       # dx = dy * mask
    # the backward multiplies by the same mask the forward drew: an upstream gradient is dropped
    # exactly where the output was
    x2 = flow.tensor(np.full((64, 12, 128), 2.0, np.float32), requires_grad=True)
    layer.manual_seed(7)
    y2 = layer(x2)
    upstream = RNG.randn(64, 12, 128).astype(np.float32)
    y2.backward(flow.tensor(upstream))
    np.testing.assert_array_equal(y2.numpy(), out)
    np.testing.assert_allclose(x2.grad.numpy(), upstream * kept / 0.9, rtol=1e-6)
    # independent across elements: neighbours are dropped together as often as chance says
    both = (~kept[..., 1:] & ~kept[..., :-1]).mean()
    assert abs(both - 0.01) < 0.002


def test_dropout_masks_follow_the_generator_seed():
    layer = Dropout(0.1)
    x = flow.ones(8, 1000)
    layer.manual_seed(3)
    first, second = layer(x).numpy(), layer(x).numpy()
    assert not np.array_equal(first, second)                # the stream moves on between calls
    layer.manual_seed(3)                                     # ... and restarts from the seed
    np.testing.assert_array_equal(layer(x).numpy(), first)
    np.testing.assert_array_equal(layer(x).numpy(), second)
    layer.generator.manual_seed(4)                           # a new seed on the generator alone
    assert not np.array_equal(layer(x).numpy(), first)
    other = Dropout(0.1)
    other.manual_seed(3)
    np.testing.assert_array_equal(other(x).numpy(), first)  # a function of the seed, not the layer


def test_dropout_eval_is_identity():
    layer = Dropout(0.1)
    x = flow.tensor(RNG.randn(4, 5).astype(np.float32))
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_reseed_dropout_repeats_the_masks(kernels):
    flow.manual_seed(0)
    model = BertForPreTraining(BertConfig.tiny(vocab_size=300, kernels=kernels)).train()
    ids = flow.tensor(RNG.randint(0, 300, (2, 12)), dtype=flow.int64)

    def logits(seed):
        reseed_dropout(model, seed)
        with flow.no_grad():
            return model(ids).prediction_logits.numpy()

    first = logits(5)
    np.testing.assert_array_equal(logits(5), first)        # the same seed: the same masks
    assert np.abs(logits(6) - first).max() > 1e-3          # another seed: other masks


def _attention_reference(qkv, mask_bias, keep):
    """The textbook formulation with OneFlow ops."""
    B, S, _, N, D = qkv.shape
    q, k, v = flow.unbind(qkv.permute(2, 0, 3, 1, 4), 0)
    probs = flow.softmax(flow.matmul(q, k.transpose(-1, -2)) / D ** 0.5 + mask_bias, dim=-1)
    context = flow.matmul(probs * keep, v).permute(0, 2, 1, 3).reshape(B, S, N * D)
    return context, probs


def test_attention_core_matches_oneflow_ops():
    B, S, N, D = 3, 10, 4, 8
    qkv = RNG.randn(B, S, 3, N, D).astype(np.float32)
    mask = np.zeros((B, 1, 1, S), np.float32)
    mask[1, ..., -3:] = -10000.0                                         # padding in one example
    kept = RNG.rand(B, N, S, S) > 0.1                                    # dropout at p = 0.1
    keep = (kept / 0.9).astype(np.float32)                               # its scaled float mask
    g_ctx = RNG.randn(B, S, N * D).astype(np.float32)
    g_probs = RNG.randn(B, N, S, S).astype(np.float32)

    def run(fn):
        x = flow.tensor(qkv, requires_grad=True)
        context, probs = fn(x, flow.tensor(mask))
        (context * flow.tensor(g_ctx)).sum().add((probs * flow.tensor(g_probs)).sum()).backward()
        return context.numpy(), probs.numpy(), x.grad.numpy()

    ref = run(lambda x, m: _attention_reference(x, m, flow.tensor(keep)))
    # the NumPy core (eager CPU: a bool mask and the rate) and the OneFlow-op one (nn.Graph, CUDA:
    # a dropout module, which is a callable)
    for core in (lambda x, m: numpy_ops.self_attention(x, m, kept, 0.1),
                 lambda x, m: ops.self_attention(x, m, lambda p: p * flow.tensor(keep))):
        ours = run(core)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
        assert np.abs(ours[1][1, ..., -3:]).max() == 0.0                # padding gets no attention


def test_fast_model_in_nn_graph_matches_eager():
    """Inside nn.Graph the fast path takes its OneFlow-op branches (no NumPy): same loss as eagerly."""
    flow.manual_seed(0)
    cfg = BertConfig.tiny(vocab_size=300, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(cfg).eval()
    ids = flow.tensor(RNG.randint(0, 300, (2, 12)), dtype=flow.int64)
    labels = flow.tensor(RNG.randint(0, 300, (2, 12)), dtype=flow.int64)

    def loss_of(out):
        V = out.prediction_logits.shape[-1]
        return fast.cross_entropy(out.prediction_logits.reshape(-1, V), labels.reshape(-1)).mean()

    class Forward(flow.nn.Graph):
        def __init__(self):
            super().__init__()
            self.model = model

        def build(self, ids, types, mask):
            return loss_of(self.model(ids, types, mask))

    types, mask = flow.zeros_like(ids), flow.ones_like(ids)
    with flow.no_grad():
        eager = loss_of(model(ids, types, mask)).numpy()
    np.testing.assert_allclose(Forward()(ids, types, mask).numpy(), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_training_step_in_nn_graph_with_dropout(kernels):
    """nn.Graph runs a module's forward with the graph's proxy as ``self``: every path must cope."""
    flow.manual_seed(0)
    model = BertForPreTraining(BertConfig.tiny(vocab_size=300, kernels=kernels)).train()
    sgd = flow.optim.SGD(model.parameters(), lr=0.1)
    ids = flow.tensor(RNG.randint(0, 300, (2, 12)), dtype=flow.int64)
    types, mask = flow.zeros_like(ids), flow.ones_like(ids)
    positions = flow.tensor(np.array([[1, 2], [3, 4]]), dtype=flow.int64)
    labels, weights = flow.tensor(RNG.randint(0, 300, (2, 2)), dtype=flow.int64), flow.ones(2, 2)
    nsp = flow.tensor(np.array([0, 1]), dtype=flow.int64)

    class Step(flow.nn.Graph):
        def __init__(self):
            super().__init__()
            self.model = model
            self.add_optimizer(sgd)

        def build(self):
            out = self.model(ids, types, mask, positions)
            loss = pretraining_loss(out.prediction_logits, out.seq_relationship_logits, labels, weights,
                                    nsp, kernels=kernels)[0]
            loss.backward()
            return loss

    step = Step()
    first, second = step().item(), step().item()
    assert np.isfinite(first) and np.isfinite(second) and first != second
