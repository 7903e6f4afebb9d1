"""BertConfig: the handful of numbers that define a BERT.

Field names are Hugging Face's ``config.json`` keys, so a published checkpoint's config loads as is
and ours loads in ``transformers``. Presets reproduce the architecture table of OneFlow-Benchmark's
BERT README.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import InitVar, dataclass
from pathlib import Path

KERNELS = ("auto", "fast", "reference")    # the values of BertConfig.kernels


@dataclass
class BertConfig:
    vocab_size: int = 30522                  # WordPiece vocabulary size (bert-base-uncased: 30522)
    hidden_size: int = 768                   # H: width of every token's vector through the encoder
    num_hidden_layers: int = 12              # L: number of stacked transformer encoder layers
    num_attention_heads: int = 12            # N: heads per self-attention; H must divide by N
    intermediate_size: int = 3072            # I: width of the feed-forward block (4 x H in the paper)
    hidden_act: str = "gelu"                 # feed-forward non-linearity; "gelu" is the exact erf form
    hidden_dropout_prob: float = 0.1         # dropout on embeddings and on each sub-layer's output
    attention_probs_dropout_prob: float = 0.1  # dropout on the attention probabilities
    max_position_embeddings: int = 512       # longest sequence the learned positions cover
    type_vocab_size: int = 2                 # segment ids: 0 = sentence A, 1 = sentence B
    initializer_range: float = 0.02          # std of the truncated-normal init of weight matrices
    layer_norm_eps: float = 1e-12            # Google / HF value (OneFlow-Benchmark used 1e-5)
    # How the model computes, not what (so not written to config.json, and not compared):
    # "auto" plugs bertlib.fast's formulations in for CPU tensors and keeps OneFlow's own kernels on
    # CUDA; "fast" uses bertlib.fast on every device; "reference" keeps bertlib.model's plain
    # nn.Linear / nn.LayerNorm / nn.Dropout and textbook attention. Same maths on every path.
    kernels: InitVar[str] = "auto"

    def __post_init__(self, kernels: str):
        if kernels not in KERNELS:
            raise ValueError(f"kernels {kernels!r} is not one of {', '.join(KERNELS)}")
        self.kernels = kernels
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ("gelu", "relu", "tanh"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (use gelu, relu or tanh)")

    @property
    def head_size(self) -> int:
        """D: width of one attention head (run_pretraining.py's flag hidden_size_per_head)."""
        return self.hidden_size // self.num_attention_heads

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def base(cls, **overrides) -> "BertConfig":
        """BERT-base: 12 layers, 768 hidden, 12 heads, 4 x 768 feed-forward (~110M parameters)."""
        return cls(**{**dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072), **overrides})

    @classmethod
    def large(cls, **overrides) -> "BertConfig":
        """BERT-large: 24 layers, 1024 hidden, 16 heads, 4 x 1024 feed-forward (~335M parameters)."""
        return cls(**{**dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "BertConfig":
        """2 layers, 128 hidden, 2 heads: the size d2l pre-trains in its tutorial; seconds on a CPU."""
        return cls(**{**dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=512, max_position_embeddings=512), **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        presets = {"base": cls.base, "large": cls.large, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)

    @classmethod
    def from_seed_flags(cls, num_hidden_layers, num_attention_heads, hidden_size_per_head, **overrides):
        """OneFlow-Benchmark's run_pretraining.py flags give width as heads x per-head size; the
        feed-forward is 4 x hidden."""
        hidden = num_attention_heads * hidden_size_per_head
        return cls(**{**dict(hidden_size=hidden, num_hidden_layers=num_hidden_layers,
                             num_attention_heads=num_attention_heads, intermediate_size=4 * hidden),
                      **overrides})

    # -------------------------------------------------------------------------- config.json I/O
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise with the keys ``transformers`` expects; write to ``path`` if given."""
        data = {"architectures": ["BertForPreTraining"], "model_type": "bert", **self.to_dict()}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "BertConfig":
        """Build from a Hugging Face config dict; keys that do not shape the maths are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        act = values.get("hidden_act")
        if act == "gelu_python":  # same maths as "gelu", another implementation in transformers
            values["hidden_act"] = "gelu"
        return cls(**values)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "BertConfig":
        """Read a config.json path (or a directory containing one, or a JSON string)."""
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        if p is None:
            return cls.from_dict(json.loads(str(path_or_text)))
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"BERT config not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
