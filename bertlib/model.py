"""BERT in one file: embeddings, self-attention, encoder, pooler, pre-training and SQuAD heads, losses.

Shape legend used in every docstring and shape comment:

    B  batch size                      S  sequence length (tokens per example)
    H  hidden size                     N  attention heads
    D  head size (H // N)              I  intermediate (feed-forward) size
    V  vocabulary size                 P  masked positions per example (max_predictions_per_seq)

Module and parameter names follow the paper's blocks one-to-one and are exactly Hugging Face's
``modeling_bert.py`` names (``bert.encoder.layer.3.attention.self.query.weight`` ...), so importing
a published checkpoint is a rename-free load (see :mod:`bertlib.weights`).

The blocks are plain ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.GELU`` / ``nn.Dropout`` modules (the
dropout a subclass whose masks inside nn.Graph differ per layer, step and rank) and a textbook
attention. Where the fast path plugs in: ``BertPreTrainedModel.post_init`` hands the built
model to :func:`bertlib.fast.use_fast_kernels` unless ``config.kernels == "reference"``; that swaps
in drop-in subclasses with the same parameters, whose forwards are formulations fast on OneFlow's
CPU kernels (:mod:`bertlib.fast`). The losses take the same ``kernels`` choice for their
cross-entropy.

Token ids, segment ids and masks are int64 OneFlow tensors. Out-of-range ids do NOT raise inside
OneFlow's embedding (they read zeros), which is why the data validator checks ids against the vocab.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from . import fast
from .config import BertConfig
from .runtime import import_oneflow
from .fast.layers import SeededDropout as Dropout  # nn.Dropout whose nn.Graph masks are per layer
from .weights import PretrainedMixin

flow = import_oneflow()
nn = flow.nn
F = flow.nn.functional


# ----------------------------------------------------------------------------------------- outputs
@dataclass
class BertOutput:
    last_hidden_state: "flow.Tensor"          # float32 [B, S, H]
    pooler_output: Optional["flow.Tensor"]    # float32 [B, H], tanh(dense([CLS]))
    attentions: Optional[List["flow.Tensor"]] = None  # per layer float32 [B, N, S, S]


@dataclass
class PreTrainingOutput:
    prediction_logits: "flow.Tensor"          # float32 [B, S, V], or [B, P, V] at masked positions
    seq_relationship_logits: "flow.Tensor"    # float32 [B, 2]: 0 = B follows A, 1 = B is random
    attentions: Optional[List["flow.Tensor"]] = None


@dataclass
class QuestionAnsweringOutput:
    start_logits: "flow.Tensor"               # float32 [B, S]
    end_logits: "flow.Tensor"                 # float32 [B, S]


def _arange(n: int, like):
    """int64 [n] = 0..n-1 where ``like`` lives: its device, or, for a global tensor (graph mode
    across processes), its placement, replicated on every rank."""
    if like.is_global:
        return flow.arange(n, dtype=flow.int64, placement=like.placement, sbp=flow.sbp.broadcast)
    return flow.arange(n, dtype=flow.int64, device=like.device)


# ------------------------------------------------------------------------------------ the blocks
ACT2FN = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}   # gelu: the exact erf form, as the paper's code


class BertEmbeddings(nn.Module):
    """token + learned position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        """input_ids, token_type_ids: int64 [B, S] -> float32 [B, S, H]."""
        seq_len = input_ids.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        positions = _arange(seq_len, like=input_ids)                                     # [S]
        x = (self.word_embeddings(input_ids)                                          # [B, S, H]
             + self.position_embeddings(positions).unsqueeze(0)                        # [1, S, H]
             + self.token_type_embeddings(token_type_ids))                             # [B, S, H]
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: softmax(Q K^T / sqrt(D) + mask) V per head."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def split_heads(self, x):
        """float32 [B, S, H] -> [B, N, S, D]: each head's slice of the hidden vector, per token."""
        B, S, _ = x.shape
        x = x.reshape(B, S, self.num_heads, self.head_size)                    # [B, S, N, D]
        return x.permute(0, 2, 1, 3)                                            # [B, N, S, D]

    def forward(self, hidden, mask_bias, output_attentions=False):
        """hidden: float32 [B, S, H]; mask_bias: float32 [B, 1, 1, S], 0 for tokens, -10000 for padding.

        Returns context float32 [B, S, H] and, when ``output_attentions``, the attention
        probabilities float32 [B, N, S, S] (else None: a fast path need not keep them).
        """
        B, S, H = hidden.shape
        q = self.split_heads(self.query(hidden))                                # [B, N, S, D]
        k = self.split_heads(self.key(hidden))                                  # [B, N, S, D]
        v = self.split_heads(self.value(hidden))                                # [B, N, S, D]
        scores = flow.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)  # [B, N, S, S]
        scores = scores + mask_bias               # [B, 1, 1, S]: the same keys masked for every query
        probs = flow.softmax(scores, dim=-1)                                    # [B, N, S, S]
        context = flow.matmul(self.dropout(probs), v)                           # [B, N, S, D]
        context = context.permute(0, 2, 1, 3).reshape(B, S, H)                  # [B, S, N, D] -> [B, S, H]
        return context, (probs if output_attentions else None)


class BertResidualOutput(nn.Module):
    """How both sub-layers end: project to H, dropout, add the sub-layer's input, LayerNorm (post-LN).

    The attention sub-layer projects its heads back (in_size = H); the feed-forward block its
    intermediate activations (in_size = I). Hugging Face has two classes for this (BertSelfOutput,
    BertOutput); one suffices, and the parameter names (``attention.output.dense``,
    ``output.LayerNorm``, ...) are the same.
    """

    def __init__(self, config: BertConfig, in_size: int):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, h, x):  # h float32 [B, S, in_size], the sub-layer's input x [B, S, H] -> [B, S, H]
        return self.LayerNorm(x + self.dropout(self.dense(h)))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, hidden, mask_bias, output_attentions=False):
        context, probs = self.self(hidden, mask_bias, output_attentions)
        return self.output(context, hidden), probs


class BertIntermediate(nn.Module):
    """First half of the feed-forward block: H -> I with the activation."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]()

    def forward(self, hidden):  # float32 [B, S, H] -> [B, S, I]
        return self.act(self.dense(hidden))


class BertLayer(nn.Module):
    """One encoder layer: self-attention sub-layer then feed-forward sub-layer."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, hidden, mask_bias, output_attentions=False):
        attended, probs = self.attention(hidden, mask_bias, output_attentions)
        return self.output(self.intermediate(attended), attended), probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden, mask_bias, output_attentions=False):
        attentions = []
        for layer in self.layer:
            hidden, probs = layer(hidden, mask_bias, output_attentions)
            if output_attentions:
                attentions.append(probs)
        return hidden, (attentions if output_attentions else None)


class BertPooler(nn.Module):
    """The sentence vector: dense + tanh on the [CLS] token's final hidden state."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden):  # float32 [B, S, H] -> [B, H]
        return self.activation(self.dense(hidden[:, 0]))


# --------------------------------------------------------------------------------- the models
class BertPreTrainedModel(PretrainedMixin, nn.Module):
    """Shared init (truncated normal, std = initializer_range), the fast-path switch, checkpoint I/O."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config

    def init_weights(self):
        std = self.config.initializer_range
        # one seed from OneFlow's generator (so flow.manual_seed governs the init), then NumPy draws
        rng = np.random.default_rng(int(flow.randint(0, 2**31 - 1, (1,)).item()))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                truncated_normal_(module.weight, std, rng)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def post_init(self):
        """Initialise the weights, then plug in the fast path that ``config.kernels`` asks for."""
        self.init_weights()
        if self.config.kernels != "reference":
            fast.use_fast_kernels(self, self.config.kernels)  # same parameters, CPU-fast forwards

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def truncated_normal_(weight, std: float, rng: np.random.Generator):
    """Fill ``weight`` from N(0, std^2) truncated at +-2 std, as Google's BERT initialises.

    OneFlow 0.9's ``nn.init.trunc_normal_`` clamps instead (4.6% of values pile up at the bounds),
    so out-of-range draws are redrawn here until none is left (each round keeps 95.4%). NumPy draws
    the numbers: OneFlow's CPU randn is slow on BERT-base's 110M values.
    """
    values = rng.standard_normal(tuple(weight.shape), dtype=np.float32)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(values) > 2.0
    values *= np.float32(std)
    with flow.no_grad():
        weight.copy_(flow.from_numpy(values).to(weight.device))  # from_numpy: no copy


def _mask_bias(attention_mask, dtype):
    """attention_mask int64 [B, S] (1 = token, 0 = padding) -> additive bias float32 [B, 1, 1, S].

    Adding -10000 before the softmax gives padding a probability of exp(-10000) = 0 in float32.
    """
    return (1.0 - attention_mask.to(dtype)).unsqueeze(1).unsqueeze(2) * -10000.0


class BertModel(BertPreTrainedModel):
    """The encoder: embeddings -> L post-LN transformer layers -> (optional) pooler."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, init: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        if init:  # task models pass False and initialise everything, heads included, once
            self.post_init()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, output_attentions=False):
        """input_ids, token_type_ids, attention_mask: int64 [B, S]. Missing segments mean all sentence
        A; a missing mask means no padding."""
        if token_type_ids is None:
            token_type_ids = flow.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = flow.ones_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)                   # [B, S, H]
        hidden, attentions = self.encoder(hidden, _mask_bias(attention_mask, hidden.dtype),
                                          output_attentions)
        pooled = self.pooler(hidden) if self.pooler is not None else None     # [B, H]
        return BertOutput(hidden, pooled, attentions)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden):  # [..., H] -> [..., H]
        return self.LayerNorm(self.act(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """Masked-LM head: transform, then scores against every word embedding (weights tied) + bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(flow.zeros(config.vocab_size))

    def forward(self, hidden, word_embeddings):
        """hidden float32 [..., H], word_embeddings float32 [V, H] -> logits float32 [..., V].

        Reusing the input embedding matrix as the output projection ("tying") is what BERT does; we
        do it by passing the matrix in rather than sharing a Parameter between two modules, which
        keeps data-parallel and graph mode free of shared-parameter corner cases.
        """
        return F.linear(self.transform(hidden), word_embeddings, self.bias)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def gather_positions(hidden, positions):
    """hidden float32 [B, S, H], positions int64 [B, P] -> float32 [B, P, H] (the rows at positions).

    Global tensors (a graph across processes, both split on the batch axis) take a gather along
    the sequence axis, which OneFlow runs on each rank's own rows, forward and backward. The flat
    ``index_select`` of local tensors would there all-gather the indices, sum the output across
    ranks and all-gather its gradient every step.
    """
    B, S, H = hidden.shape
    if hidden.is_global:
        index = positions.unsqueeze(-1).expand(B, positions.shape[1], H)                      # [B, P, H]
        return flow.gather(hidden, 1, index)                                                 # [B, P, H]
    P = positions.shape[1]
    offsets = (_arange(B, like=positions) * S).unsqueeze(1)                                   # [B, 1]
    flat = (positions + offsets).reshape(B * P)                                              # [B*P]
    return flow.index_select(hidden.reshape(B * S, H), 0, flat).reshape(B, P, H)             # [B, P, H]


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the two pre-training heads: masked LM (tied to word embeddings) and next sentence."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, init=False)
        self.cls = BertPreTrainingHeads(config)
        self.post_init()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, masked_lm_positions=None,
                output_attentions=False):
        """As :class:`BertModel`, plus masked_lm_positions int64 [B, P]: when given, MLM logits are
        computed only there ([B, P, V] instead of [B, S, V]) — the V-wide projection is the most
        expensive matmul of pre-training and 85% of positions don't need it."""
        out = self.bert(input_ids, token_type_ids, attention_mask, output_attentions)
        hidden = out.last_hidden_state                                           # [B, S, H]
        if masked_lm_positions is not None:
            hidden = gather_positions(hidden, masked_lm_positions)               # [B, P, H]
        word_embeddings = self.bert.embeddings.word_embeddings.weight            # [V, H]
        mlm_logits = self.cls.predictions(hidden, word_embeddings)               # [B, S|P, V]
        nsp_logits = self.cls.seq_relationship(out.pooler_output)                # [B, 2]
        return PreTrainingOutput(mlm_logits, nsp_logits, out.attentions)


class BertForQuestionAnswering(BertPreTrainedModel):
    """BERT + one linear layer giving each token a score for being the answer's start and end."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False, init=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        hidden = self.bert(input_ids, token_type_ids, attention_mask).last_hidden_state  # [B, S, H]
        logits = self.qa_outputs(hidden)                                                # [B, S, 2]
        start, end = logits[:, :, 0], logits[:, :, 1]                                   # [B, S] each
        return QuestionAnsweringOutput(start, end)


# ------------------------------------------------------------------------------------- the losses
def _cross_entropy(logits, labels, kernels: str):
    """logits float32 [M, C], labels int64 [M] -> per-row loss float32 [M] (-log softmax at label)."""
    if fast.applies(kernels, logits):  # same values; the backward without OneFlow's slow CPU kernels
        return fast.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none")


def pretraining_loss(prediction_logits, seq_relationship_logits, masked_lm_ids, masked_lm_weights,
                     next_sentence_labels, kernels: str = "auto"):
    """The BERT pre-training objective.

    Args:
        prediction_logits: float32 [B, P, V], MLM logits at the masked positions.
        seq_relationship_logits: float32 [B, 2].
        masked_lm_ids: int64 [B, P], the original token at each masked position (0 for padding).
        masked_lm_weights: float32 [B, P], 1.0 for a real prediction, 0.0 for padding slots.
        next_sentence_labels: int64 [B] or [B, 1], 0 = B follows A, 1 = B is random.
        kernels: as :attr:`BertConfig.kernels`, for the cross-entropy.

    Returns:
        (total, mlm, nsp) float32 scalars: mlm = sum(w * CE) / sum(w), nsp = mean CE, total = mlm + nsp.
    """
    B, P, V = prediction_logits.shape
    per_token = _cross_entropy(prediction_logits.reshape(B * P, V), masked_lm_ids.reshape(B * P),
                               kernels)                                                    # [B*P]
    weights = masked_lm_weights.reshape(B * P).to(per_token.dtype)                        # [B*P]
    # clamp: a batch without any masked token gives 0 instead of 0/0
    mlm = (per_token * weights).sum() / flow.clamp(weights.sum(), min=1e-5)
    nsp = _cross_entropy(seq_relationship_logits, next_sentence_labels.reshape(-1), kernels).mean()
    return mlm + nsp, mlm, nsp


def squad_loss(start_logits, end_logits, start_positions, end_positions, kernels: str = "auto"):
    """start/end_logits float32 [B, S]; positions int64 [B] or [B, 1] -> (CE(start) + CE(end)) / 2.

    ``kernels``: as :attr:`BertConfig.kernels`, for the cross-entropy."""
    start = _cross_entropy(start_logits, start_positions.reshape(-1), kernels).mean()
    end = _cross_entropy(end_logits, end_positions.reshape(-1), kernels).mean()
    return (start + end) / 2


# ------------------------------------------------------------------------------------ dropout seeds
def reseed_dropout(model, seed: int) -> None:
    """Give the i-th dropout layer of ``model`` (in ``model.modules()`` order) the seed ``seed + i``.

    OneFlow's nn.Dropout draws from a generator of its own, created with a random seed, so
    ``flow.manual_seed`` does not reach it; a trainer re-seeding every step from (seed, step, rank)
    makes a resumed run draw the same masks. bertlib.fast's dropout also restarts its NumPy stream.
    """
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for index, module in enumerate(dropouts):
        if isinstance(module, fast.Dropout):
            module.manual_seed(seed + index)
        else:
            module.generator.manual_seed(seed + index)


def share_dropout_generator(model, device: str):
    """Make every dropout layer of ``model`` draw from one new generator on ``device``; return it.

    The layers then draw one after the other from its stream (in the order the forward runs them),
    so one ``manual_seed`` of it decides every mask of a step. For eager runs on CUDA, where seeding
    a generator waits for the device (see bertlib.trainer). Not for bertlib.fast's NumPy masks (eager
    CPU), which seed each layer's stream from its own generator, nor for nn.Graph, which reads each
    layer's seed when it compiles.
    """
    cpu = not device.startswith("cuda")
    if cpu and any(isinstance(m, fast.Dropout) and m.kernels != "reference" for m in model.modules()):
        raise ValueError("one shared dropout generator on the CPU needs BertConfig(kernels='reference'): "
                         "bertlib.fast draws each layer's CPU masks from its own generator's seed")
    generator = flow.Generator(device="cpu" if cpu else "cuda")
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.generator = generator
    return generator
