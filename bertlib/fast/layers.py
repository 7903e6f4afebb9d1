"""Drop-in subclasses of ``nn.Linear``, ``nn.LayerNorm``, ``nn.GELU`` and ``nn.Dropout``, and the
dropout bertlib.model builds (:class:`SeededDropout`: correct masks inside nn.Graph).

Each keeps its parent's parameters (same names, same tensors) and only changes ``forward``: where
``BertConfig.kernels`` says so (see :func:`bertlib.fast.oneflow_ops.applies`) it calls the
formulation of :mod:`bertlib.fast.oneflow_ops` or :mod:`bertlib.fast.numpy_ops`, elsewhere the
parent's own forward. A module becomes one in place, with :meth:`DropIn.adopt`.

The forwards name their parent class instead of calling ``super()``: inside nn.Graph, ``self`` is
the graph's proxy of the module, not an instance of the class.
"""
from __future__ import annotations

from ..runtime import import_oneflow
from . import numpy_ops, oneflow_ops as ops

flow = import_oneflow()
nn = flow.nn


class DropIn:
    """What every bertlib.fast module shares: the ``kernels`` choice and becoming one in place."""

    kernels = "auto"

    @classmethod
    def adopt(cls, module, kernels: str):
        """Turn ``module`` (an instance of the parent class) into ``cls``; parameters untouched."""
        module.__class__ = cls
        module.kernels = kernels
        return module


def linear(x, weight, bias):
    """x float32 [..., in], weight [out, in], bias [out] -> x W^T + b [..., out]: NumPy's matmul on
    eager CPU tensors (its BLAS is the faster one), else OneFlow's ops (in a graph, on CUDA)."""
    if bias is not None and ops.eager_on_cpu(x):
        return numpy_ops.linear(x, weight, bias)
    return ops.linear(x, weight, bias)


class Linear(DropIn, nn.Linear):
    """x W^T + b with NumPy's matmul eagerly on the CPU; in a graph its backward forms the bias
    gradient with a matmul."""

    def forward(self, x):  # float32 [..., in] -> [..., out]
        if ops.applies(self.kernels, x):
            return linear(x, self.weight, self.bias)
        return nn.Linear.forward(self, x)


class LayerNorm(DropIn, nn.LayerNorm):
    """LayerNorm over the last axis, row statistics and broadcasts written as matmuls on the CPU
    (NumPy over cache-sized pieces at prediction)."""

    def forward(self, x):  # float32 [..., H] -> [..., H]
        if ops.applies(self.kernels, x):
            if ops.eager_on_cpu(x) and not ops.needs_grad(x):     # prediction: no backward to prepare
                return numpy_ops.layer_norm_inference(x, self.weight, self.bias, self.eps)
            return ops.layer_norm(x, self.weight, self.bias, self.eps)
        return nn.LayerNorm.forward(self, x)


class GELU(DropIn, nn.GELU):
    """Exact (erf) GELU with one vectorised exponential shared by the forward and the backward:
    NumPy's SIMD ufuncs eagerly on the CPU, OneFlow's ops in a graph.

    In a graph without a backward to come the parent's forward kernel is the faster one there: the
    shared formulation earns its cost only by making the backward one product."""

    def forward(self, x):  # float32 [..., K] -> [..., K]
        if ops.applies(self.kernels, x):
            if ops.eager_on_cpu(x):
                return numpy_ops.gelu(x) if ops.needs_grad(x) else numpy_ops.gelu_inference(x)
            if ops.needs_grad(x):
                return ops.gelu(x)
        return nn.GELU.forward(self, x)


def graph_dropout(x, p: float, generator):
    """Inverted dropout for tensors traced in nn.Graph: ``x * mask / (1 - p)``, mask ~ Bernoulli(1 - p).

    OneFlow 0.9's ``dropout`` op ignores the generator inside a graph: every dropout kernel starts
    from one fixed default seed, so layers of the same shape draw the same mask, on every rank.
    Its uniform op keeps the generator's seed (read when the graph compiles) and each kernel moves
    its stream on at every step, so the mask comes from ``flow.rand`` here: another mask per layer
    (each layer has its own seed), per step (the stream moves on) and, for global tensors, per rank
    (OneFlow draws every rank's slice of a split tensor from its own offset of the stream).
    """
    keep = 1.0 - p
    if x.is_global:
        u = flow.rand(*x.shape, placement=x.placement, sbp=x.sbp, generator=generator)
    else:
        u = flow.rand(*x.shape, device=x.device, generator=generator)
    return x * ((u < keep).to(x.dtype) * (1.0 / keep))


class SeededDropout(nn.Dropout):
    """``nn.Dropout`` whose masks inside nn.Graph come from :func:`graph_dropout` (eagerly: the
    parent's, from the same ``generator``). bertlib.model builds its dropout layers from this."""

    def forward(self, x):  # float32 [...] -> [...]
        if self.training and self.p > 0.0 and x.is_lazy:
            return graph_dropout(x, self.p, self.generator)
        return nn.Dropout.forward(self, x)


class Dropout(DropIn, SeededDropout):
    """Inverted dropout whose eager CPU masks come from NumPy, seeded by the layer's generator.

    The mask stream restarts whenever the generator's seed changes, and on :meth:`manual_seed`
    (:func:`bertlib.model.reseed_dropout` calls it), so a seed decides every mask after it. Inside
    nn.Graph: :func:`graph_dropout` with the same ``generator`` (the seed it had when the graph
    compiled); eagerly for global tensors and on CUDA: OneFlow's dropout with that ``generator``.
    """

    @classmethod
    def adopt(cls, module, kernels: str):
        module = super().adopt(module, kernels)
        module.stream = numpy_ops.DropoutStream()
        return module

    def manual_seed(self, seed: int):
        """Re-seed the generator and restart the NumPy mask stream from it."""
        self.generator.manual_seed(seed)
        self.stream.reset()

    def forward(self, x):  # float32 [...] -> [...]: x * mask / (1 - p), mask ~ Bernoulli(1 - p)
        if not self.training or self.p == 0.0:
            return x
        if x.is_lazy:
            return graph_dropout(x, self.p, self.generator)
        if not ops.eager_on_cpu(x):
            return nn.Dropout.forward(self, x)
        # autograd differentiates the product: dx = dy * mask. (A NumPy autograd Function keeping a
        # uint8 mask saved 81 MB at BERT-base batch 8 but cost 5% of a step on two busy cores:
        # every NumPy entry point waits for OneFlow's queue, and these are 74 more per step.)
        return x * flow.from_numpy(numpy_ops.dropout_mask(self.p, self.generator, self.stream, x.shape))

    def keep(self, shape):
        """bool array: where this layer keeps the elements of a CPU tensor of ``shape`` (to be
        scaled by 1 / (1 - p)); None when it drops nothing (eval mode, p = 0). The fast attention
        core takes its dropout as this mask."""
        if not self.training or self.p == 0.0:
            return None
        return numpy_ops.dropout_keep(self.p, self.generator, self.stream, shape)
