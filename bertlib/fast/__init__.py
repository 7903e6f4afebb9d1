"""bertlib's fast CPU path: the same maths as :mod:`bertlib.model`, in formulations that are fast on
OneFlow 0.9's CPU kernels.

:mod:`bertlib.model` is written with plain ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.GELU`` /
``nn.Dropout`` and a textbook attention. Unless ``BertConfig.kernels == "reference"``, the model
hands itself to :func:`use_fast_kernels` once it is built, which turns those modules into the
drop-in subclasses here: same parameters and names, another ``forward``.

* :mod:`.oneflow_ops`: ``autograd.Function``s built from OneFlow ops (linear, layer_norm, gelu,
  log_softmax, cross_entropy, the attention core for nn.Graph / CUDA). They run anywhere.
* :mod:`.numpy_ops`: NumPy on the memory of eager CPU tensors (Linear layers, GELU, dropout masks,
  the attention core, LayerNorm at prediction).
* :mod:`.layers`: the drop-ins for OneFlow's modules; :mod:`.bert`: for bertlib.model's attention
  and masked-LM head, and the swap itself.

bench/op_profile.py times each op against OneFlow's built-in; bench/RESULTS.md has the numbers.
"""
from __future__ import annotations

from .layers import GELU, Dropout, LayerNorm, Linear
from .oneflow_ops import applies, cross_entropy, eager_on_cpu, on_cpu

__all__ = ["Dropout", "GELU", "LayerNorm", "Linear", "applies", "cross_entropy", "eager_on_cpu",
           "on_cpu", "use_fast_kernels"]


def use_fast_kernels(model, kernels: str = "auto"):
    """Swap bertlib.fast's drop-in modules into ``model`` in place (see :func:`.bert.swap_in`)."""
    # imported here: .bert subclasses bertlib.model's blocks, and bertlib.model imports this package
    from .bert import swap_in

    return swap_in(model, kernels)
