"""Prediction in batches of similar length cut to their longest window (bertlib.squad.logits) and
the forward-only fast path it runs on (no dropout, no gradient): the same logits as padded batches.

Transformers' logits through the same function are checked in test_model.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from bertlib.config import BertConfig
from bertlib.fast import numpy_ops
from bertlib.model import BertForQuestionAnswering, flow
from bertlib.squad.logits import _lengths, qa_logits

RNG = np.random.RandomState(7)
S = 40


def _windows(lengths):
    """SQuAD-like windows of S positions: [CLS] 4 question tokens [SEP] context [SEP], then padding."""
    windows = []
    for n in lengths:
        ids = np.zeros(S, np.int32)
        ids[:n] = RNG.randint(5, 200, n)
        ids[0], ids[5], ids[n - 1] = 1, 2, 2
        mask = (np.arange(S) < n).astype(np.int32)
        seg = ((np.arange(S) >= 6) & (np.arange(S) < n)).astype(np.int32)
        windows.append({"input_ids": ids, "segment_ids": seg, "input_mask": mask})
    return windows


@pytest.fixture(scope="module")
def model():
    flow.manual_seed(3)
    return BertForQuestionAnswering(BertConfig.tiny(vocab_size=200)).eval()


def _as_batch(windows):
    """int64 tensors [len(windows), S]: input_ids, segment_ids, input_mask, every window padded to S."""
    return tuple(flow.tensor(np.stack([w[k] for w in windows]).astype(np.int64))
                 for k in ("input_ids", "segment_ids", "input_mask"))


def _padded_logits(model, windows):
    """Each window padded to S: the logits every real token should get."""
    with flow.no_grad():
        out = model(*_as_batch(windows))
    return out.start_logits.numpy(), out.end_logits.numpy()


def test_cut_batches_give_the_padded_logits_in_the_input_order(model):
    lengths = [12, 40, 9, 33, 40, 17, 25, 8, 30, 14, 11]          # full and short windows, mixed
    windows = _windows(lengths)
    seen = []
    # 3 per batch, 2 batches per pool: several pools, the last ones partial
    starts, ends = qa_logits(model, windows, batch_size=3, progress=seen.append, pool_batches=2)
    ref_start, ref_end = _padded_logits(model, windows)
    mask = np.stack([w["input_mask"] for w in windows]) == 1
    assert starts.shape == ends.shape == (len(windows), S) and starts.dtype == np.float32
    np.testing.assert_allclose(starts[mask], ref_start[mask], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(ends[mask], ref_end[mask], atol=2e-5, rtol=1e-5)
    assert np.isneginf(starts[~mask]).all() and np.isneginf(ends[~mask]).all()
    assert seen == sorted(seen) and seen[-1] == len(windows)        # progress counts every window once
    assert len(seen) == 4                                          # pools of 6 and 5 windows: 2 + 2 batches


def test_cut_is_each_batch_longest_window(model, monkeypatch):
    """The model sees batches sorted longest first, each cut to its longest window."""
    lengths = [12, 40, 9, 33, 17, 25]
    shapes = []
    forward = type(model).forward

    def spy(self, ids, *rest, **kw):
        shapes.append(tuple(ids.shape))
        return forward(self, ids, *rest, **kw)

    monkeypatch.setattr(type(model), "forward", spy)
    qa_logits(model, _windows(lengths), batch_size=2)
    assert shapes == [(2, 40), (2, 25), (2, 12)]


def test_lengths_end_after_the_last_token():
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    assert _lengths(mask).tolist() == [3, 5, 3, 1]


def test_no_windows(model):
    starts, ends = qa_logits(model, iter([]), batch_size=4)
    assert starts.shape == ends.shape == (0, 0)


def test_inference_attention_matches_the_training_core():
    """The per-example core for prediction = the autograd core without dropout, padding included."""
    B, T, N, D = 3, 11, 4, 8
    qkv = RNG.randn(B, T, 3, N, D).astype(np.float32)
    bias = np.zeros((B, 1, 1, T), np.float32)
    bias[1, ..., -4:] = -10000.0
    with flow.no_grad():
        ours = numpy_ops.attention_inference(flow.tensor(qkv), flow.tensor(bias)).numpy()
        ref, _ = numpy_ops.self_attention(flow.tensor(qkv), flow.tensor(bias))
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-6, rtol=1e-5)


def test_prediction_path_matches_the_reference_kernels_and_keeps_attentions_on_request():
    """Under no_grad the fast model takes its forward-only path (per-example attention, OneFlow's
    GELU kernel): the logits of the plain-OneFlow model; with output_attentions it still returns
    the probabilities."""
    flow.manual_seed(5)
    fast = BertForQuestionAnswering(BertConfig.tiny(vocab_size=200, kernels="fast")).eval()
    plain = BertForQuestionAnswering(BertConfig.tiny(vocab_size=200, kernels="reference")).eval()
    plain.load_state_dict(fast.state_dict())
    ids, seg, mask = _as_batch(_windows([40, 23, 9]))
    with flow.no_grad():
        a = fast(ids, seg, mask)
        b = plain(ids, seg, mask)
        ours = fast.bert(ids, seg, mask, output_attentions=True).attentions
        theirs = plain.bert(ids, seg, mask, output_attentions=True).attentions
    np.testing.assert_allclose(a.start_logits.numpy(), b.start_logits.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(a.end_logits.numpy(), b.end_logits.numpy(), atol=2e-5, rtol=1e-5)
    assert len(ours) == len(theirs) == fast.config.num_hidden_layers
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), q.numpy(), atol=1e-6)
    # and without asking, no [B, N, S, S] probabilities are handed out
    with flow.no_grad():
        assert fast.bert(ids, seg, mask).attentions is None


def test_gelu_without_gradient_matches_the_training_formulation():
    from bertlib.fast import layers

    act = layers.GELU.adopt(flow.nn.GELU(), "fast")
    x = flow.tensor(RNG.randn(64, 96).astype(np.float32) * 4, requires_grad=True)
    with_grad = act(x)                      # the shared-exponential formulation (a backward follows)
    with flow.no_grad():
        without = act(x)                    # OneFlow's forward kernel
    np.testing.assert_allclose(without.numpy(), with_grad.detach().numpy(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 48), (700, 32)])    # 700 rows: several cache-sized pieces
def test_layer_norm_without_gradient_matches_the_training_formulation(shape):
    from bertlib.fast import layers

    norm = layers.LayerNorm.adopt(flow.nn.LayerNorm(shape[-1], eps=1e-3), "fast")
    with flow.no_grad():
        norm.weight.copy_(flow.tensor(RNG.rand(shape[-1]).astype(np.float32) + 0.5))
        norm.bias.copy_(flow.tensor(RNG.randn(shape[-1]).astype(np.float32)))
    x = flow.tensor((RNG.randn(*shape) * 3 + 1).astype(np.float32), requires_grad=True)
    with_grad = norm(x)                     # the training formulation (a backward follows)
    with flow.no_grad():
        without = norm(x)                   # NumPy over cache-sized pieces
        builtin = flow.nn.functional.layer_norm(x, (shape[-1],), norm.weight, norm.bias, 1e-3)
    assert without.shape == x.shape
    np.testing.assert_allclose(without.numpy(), with_grad.detach().numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(without.numpy(), builtin.numpy(), atol=2e-5, rtol=1e-5)
