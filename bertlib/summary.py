"""Looking inside a model: parameter counts by component, and the tensor shapes of a forward pass.

Used by notebook 01 and the tests; nothing here changes what a model computes.
"""
from __future__ import annotations

import contextlib
import re
from collections import OrderedDict

from .runtime import import_oneflow

flow = import_oneflow()

# The order the blocks appear in the paper's figure, bottom to top.
COMPONENTS = ("embeddings", "attention", "feed-forward", "LayerNorm", "pooler",
              "MLM head", "NSP head", "QA head")

# (pattern on the Hugging Face parameter name, component). The first match wins, so LayerNorm
# parameters are counted as LayerNorm wherever they sit (embeddings, each sub-layer, MLM head).
_RULES = (
    (r"LayerNorm\.", "LayerNorm"),
    (r"embeddings\.(word|position|token_type)_embeddings\.", "embeddings"),
    (r"encoder\.layer\.\d+\.attention\.", "attention"),
    (r"encoder\.layer\.\d+\.(intermediate|output)\.", "feed-forward"),
    (r"pooler\.", "pooler"),
    (r"^cls\.predictions\.", "MLM head"),
    (r"^cls\.seq_relationship\.", "NSP head"),
    (r"^qa_outputs\.", "QA head"),
)


def component(name: str) -> str:
    """Which block of BERT a parameter belongs to, from its (Hugging Face) name."""
    for pattern, label in _RULES:
        if re.search(pattern, name):
            return label
    raise ValueError(f"parameter {name!r} belongs to no known BERT component")


def count_parameters(model) -> int:
    """Number of learned scalars. Shared Parameter objects are counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def parameter_breakdown(model) -> "OrderedDict[str, int]":
    """{component: parameter count} in :data:`COMPONENTS` order; components the model lacks are 0.

    The MLM decoder is the word-embedding matrix (tied), so it is counted under embeddings only:
    the MLM head owns just its transform (dense + LayerNorm) and the V output biases.
    """
    counts = OrderedDict((c, 0) for c in COMPONENTS)
    for name, p in model.named_parameters():
        counts[component(name)] += p.numel()
    return counts


@contextlib.contextmanager
def _no_random_init():
    """Skip every random initialiser while modules are built (OneFlow 0.9 has no "meta" device)."""
    from . import model as bert_model

    targets = [(flow.nn.Linear, "reset_parameters"), (flow.nn.Embedding, "reset_parameters"),
               (bert_model.BertPreTrainedModel, "init_weights")]
    saved = [(cls, attr, cls.__dict__[attr]) for cls, attr in targets]
    try:
        for cls, attr, _ in saved:
            setattr(cls, attr, lambda self: None)
        yield
    finally:
        for cls, attr, original in saved:
            setattr(cls, attr, original)


def build(model_class, config, init: bool = True):
    """``model_class(config)``; with ``init=False`` the weights are allocated but left unfilled.

    Drawing 336M random numbers for BERT-large takes ~40 s on a 2-core CPU; counting parameters or
    listing shapes needs none of them. A model built with ``init=False`` holds garbage: count it,
    look at its shapes, or load a checkpoint into it — never train or evaluate it as is.
    """
    if init:
        return model_class(config)
    with _no_random_init():
        return model_class(config)


def _shapes(value):
    """The shape of a tensor, or of each tensor in a (nested) tuple/list/dataclass output."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value if v is not None)
    if hasattr(value, "__dataclass_fields__"):
        return {k: _shapes(v) for k, v in vars(value).items() if v is not None}
    return None


@contextlib.contextmanager
def trace_shapes(model, module_names):
    """Record the output shape of each named submodule during the forward passes run inside.

    >>> with trace_shapes(model, ["bert.embeddings", "bert.pooler"]) as shapes:
    ...     model(input_ids)
    >>> shapes["bert.embeddings"]        # (B, S, H)

    Implemented with forward hooks. OneFlow 0.9's ``register_forward_hook`` returns no handle to
    remove the hook with, so the hooks are taken out of ``_forward_hooks`` on exit.
    """
    modules = dict(model.named_modules())
    missing = [n for n in module_names if n not in modules]
    if missing:
        raise KeyError(f"no submodule named {', '.join(missing)}")
    shapes = OrderedDict((n, None) for n in module_names)
    installed = []
    for name in module_names:
        def hook(module, inputs, output, _name=name):
            shapes[_name] = _shapes(output)
        modules[name].register_forward_hook(hook)
        installed.append((modules[name], hook))
    try:
        yield shapes
    finally:
        for module, hook in installed:
            for key in [k for k, v in module._forward_hooks.items() if v is hook]:
                del module._forward_hooks[key]
