"""The fast path for whole blocks of :mod:`bertlib.model`, and the swap that plugs it all in.

Self-attention gets its own drop-in because its fast form changes the order of work, not one op:
the Q, K and V weights are concatenated so one matmul gives [B, S, 3, N, D], whose heads the NumPy
core reads in place. The masked-LM head's tied decoder is a functional linear, so it needs a
drop-in to reach :func:`bertlib.fast.oneflow_ops.linear`.
"""
from __future__ import annotations

from ..model import BertLMPredictionHead, BertSelfAttention, flow, nn
from . import layers, numpy_ops, oneflow_ops as ops


class SelfAttention(layers.DropIn, BertSelfAttention):
    """:class:`bertlib.model.BertSelfAttention` with one fused Q/K/V projection and, eagerly on the
    CPU, the NumPy attention core (:class:`bertlib.fast.numpy_ops._AttentionCore`)."""

    def forward(self, hidden, mask_bias, output_attentions=False):
        """hidden float32 [B, S, H], mask_bias float32 [B, 1, 1, S] -> context float32 [B, S, H],
        attention probabilities float32 [B, N, S, S] or None (as the parent)."""
        if not ops.applies(self.kernels, hidden):
            return BertSelfAttention.forward(self, hidden, mask_bias, output_attentions)  # not super(): see .layers
        B, S, H = hidden.shape
        N, D = self.num_heads, self.head_size
        if ops.eager_on_cpu(hidden):
            # one [B, S, 3H] matmul instead of three [B, S, H] ones
            qkv = numpy_ops.stacked_linear(hidden, (self.query, self.key, self.value))  # [B, S, 3H]
            qkv = qkv.reshape(B, S, 3, N, D)                                    # [B, S, 3, N, D]
            keep = self.dropout.keep((B, N, S, S))
            if keep is None and not output_attentions and not ops.needs_grad(qkv):
                return numpy_ops.attention_inference(qkv, mask_bias), None           # prediction
            context, probs = numpy_ops.self_attention(qkv, mask_bias, keep, self.dropout.p)
        else:
            # the three weights side by side, for the same single matmul
            qkv_weight = flow.cat([self.query.weight, self.key.weight, self.value.weight], dim=0)  # [3H, H]
            qkv_bias = flow.cat([self.query.bias, self.key.bias, self.value.bias], dim=0)          # [3H]
            qkv = ops.linear(hidden, qkv_weight, qkv_bias)                      # [B, S, 3H]
            qkv = qkv.reshape(B, S, 3, N, D)                                    # [B, S, 3, N, D]
            context, probs = ops.self_attention(qkv, mask_bias, self.dropout)
        return context, (probs if output_attentions else None)


class LMPredictionHead(layers.DropIn, BertLMPredictionHead):
    """:class:`bertlib.model.BertLMPredictionHead` whose tied decoder is bertlib.fast's linear."""

    def forward(self, hidden, word_embeddings):  # [..., H], [V, H] -> [..., V]
        if not ops.applies(self.kernels, hidden):
            return BertLMPredictionHead.forward(self, hidden, word_embeddings)
        return layers.linear(self.transform(hidden), word_embeddings, self.bias)


DROP_INS = {
    nn.Linear: layers.Linear,
    nn.LayerNorm: layers.LayerNorm,
    nn.GELU: layers.GELU,
    nn.Dropout: layers.Dropout,
    layers.SeededDropout: layers.Dropout,
    BertSelfAttention: SelfAttention,
    BertLMPredictionHead: LMPredictionHead,
}


def swap_in(model, kernels: str):
    """Turn every module of ``model`` that has a drop-in into it, in place; return ``model``.

    Parameters, their names and the module tree stay as they are, so checkpoints and optimizers
    see no difference. Modules already swapped are left alone (the lookup is by exact type).
    """
    for module in list(model.modules()):
        drop_in = DROP_INS.get(type(module))
        if drop_in is not None:
            drop_in.adopt(module, kernels)
    return model
