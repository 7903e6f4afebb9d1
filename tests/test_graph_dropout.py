"""Dropout inside nn.Graph: another mask per layer, per step and per rank, fixed by the layers' seeds.

OneFlow 0.9's own ``dropout`` op ignores the generator in a graph (every kernel starts from one
default seed): two layers of the same shape draw the same mask. bertlib's dropout layers draw their
graph masks from ``flow.rand`` with their own generator instead (bertlib.fast.layers.graph_dropout).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertlib.config import BertConfig
from bertlib.fast.layers import SeededDropout
from bertlib.model import BertModel, flow, reseed_dropout

ROOT = Path(__file__).resolve().parents[1]
nn = flow.nn


class _Graph(nn.Graph):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def build(self, x):
        return self.module(x)


class _Two(nn.Module):
    """Two dropout layers of a model on the same input: their masks side by side."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return flow.stack([self.a(x), self.b(x)])


def _two_model_dropouts(kernels):
    """The embeddings' and the first layer's output dropouts of a tiny BertModel (p = 0.5)."""
    model = BertModel(BertConfig.tiny(vocab_size=50, hidden_dropout_prob=0.5, kernels=kernels))
    model.train()
    return model, _Two(model.embeddings.dropout, model.encoder.layer[0].output.dropout)


def _draw(graph, steps=2, shape=(8, 64)):
    x = flow.ones(*shape)
    return [graph(x).numpy() for _ in range(steps)]             # each [2 layers, *shape]


def test_oneflow_graph_dropout_op_repeats_one_mask():
    """Why bertlib has its own graph dropout (if this starts failing, OneFlow fixed its op)."""
    a, b = nn.Dropout(0.5), nn.Dropout(0.5)
    a.generator.manual_seed(1)
    b.generator.manual_seed(2)
    masks = _draw(_Graph(_Two(a, b)), steps=1)[0]
    assert (masks[0] == masks[1]).all()


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_two_layers_and_two_steps_draw_different_masks(kernels):
    model, two = _two_model_dropouts(kernels)
    reseed_dropout(model, 77)
    first, second = _draw(_Graph(two))
    for masks in (first, second):
        assert set(np.unique(masks)) == {0.0, 2.0}              # scaled Bernoulli(0.5)
        assert 0.35 < (masks == 0).mean() < 0.65
        assert not (masks[0] == masks[1]).all()                 # layer a != layer b
    assert not (first == second).all()                          # step 1 != step 2


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_same_seed_same_masks_after_a_resume(kernels):
    """A resumed run compiles a new graph after re-seeding from the same (seed, step, rank): it
    draws the masks the first graph drew; another seed draws others."""
    model, two = _two_model_dropouts(kernels)
    reseed_dropout(model, 5)
    before = _draw(_Graph(two), steps=3)
    reseed_dropout(model, 5)
    after = _draw(_Graph(two), steps=3)
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    reseed_dropout(model, 6)
    other = _draw(_Graph(two), steps=1)[0]
    assert not (other == before[0]).all()


def test_graph_dropout_gradient_is_the_mask_and_eval_is_identity():
    layer = SeededDropout(0.5)
    layer.generator.manual_seed(3)
    holder = nn.Module()
    holder.w, holder.layer = nn.Parameter(flow.ones(4, 16)), layer
    sgd = flow.optim.SGD(holder.parameters(), lr=1.0)

    class Step(nn.Graph):
        def __init__(self):
            super().__init__()
            self.holder = holder
            self.add_optimizer(sgd)

        def build(self, x):
            y = self.holder.layer(self.holder.w * x)
            y.sum().backward()
            return y

    x = flow.ones(4, 16)
    y = Step()(x).numpy()
    assert set(np.unique(y)) == {0.0, 2.0}
    # d sum(y) / dw = mask / (1 - p) = y where x = w = 1; one SGD step with lr 1: w = 1 - y
    np.testing.assert_allclose(holder.w.numpy(), 1.0 - y)
    layer.eval()
    np.testing.assert_array_equal(_Graph(layer)(x).numpy(), x.numpy())


def test_two_ranks_draw_different_masks(tmp_path):
    out = tmp_path / "masks.json"
    launch = ("import sys; from bertlib.launch import run_launcher; sys.exit(run_launcher("
              "'tests.helpers.graph_dropout_ranks', sys.argv[1:], nproc_per_node=2))")
    proc = subprocess.run([sys.executable, "-c", launch, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    steps = np.array(json.loads(out.read_text()))              # [step, layer, 8 rows, 64]
    for masks in steps:
        rank0, rank1 = masks[:, :4], masks[:, 4:]               # rows 0-3 on rank 0, 4-7 on rank 1
        assert not (rank0 == rank1).all()                       # rank 0 != rank 1
        assert not (masks[0] == masks[1]).all()                 # layer a != layer b
    assert not (steps[0] == steps[1]).all()                     # step 1 != step 2


def _syn_losses(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.syn_train", "--iters", "3",
                           "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    return [r["total_loss"] for r in json.loads(out.read_text())]


def test_graph_training_without_dropout_equals_eager(tmp_path):
    eager = _syn_losses(tmp_path, "eager", "--no_dropout")
    graph = _syn_losses(tmp_path, "graph", "--no_dropout", "--mode", "graph")
    assert graph == pytest.approx(eager, abs=2e-5)
    assert eager[0] != eager[-1]


def test_fp16_graph_turns_on_the_amp_fusions():
    """Mixed precision compiles with the fusions OneFlow's LiBai uses with AMP (built here, on the
    CPU, without running: float16 needs CUDA); fp32 graphs leave them off."""
    from bertlib.graph import TrainStepGraph

    model = flow.nn.Linear(4, 2)
    optimizer = flow.optim.AdamW(model.parameters(), lr=1e-3)
    for fp16 in (True, False):
        proto = TrainStepGraph(model, optimizer, None, accumulation=1, use_fp16=fp16).config.proto
        assert proto.enable_fuse_model_update_ops is fp16
        assert proto.enable_fuse_add_to_output is fp16
        assert proto.enable_fuse_cast_scale is fp16
        assert proto.enable_auto_mixed_precision is fp16
