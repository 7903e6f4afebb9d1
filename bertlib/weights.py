"""Hugging Face-format checkpoints: ``config.json`` + ``model.safetensors``, in and out.

Because bertlib's parameter names are Hugging Face's, importing a checkpoint is a short rename table
rather than code:

* checkpoints of a bare ``BertModel`` (sentence-transformers' MiniLM, for example) have no ``bert.``
  prefix; checkpoints of the task models have it. Both load into every bertlib model.
* TensorFlow-era conversions call LayerNorm's parameters ``gamma``/``beta``.
* ``cls.predictions.decoder.weight`` is the word-embedding matrix (tied) and
  ``cls.predictions.decoder.bias`` is ``cls.predictions.bias``: skipped or used as a fallback.
* buffers such as ``embeddings.position_ids`` hold no learned values and are ignored.

Heads that the checkpoint lacks (a SQuAD head on a pre-trained encoder) keep their fresh
initialisation and are listed in a warning, as ``transformers`` does.

A saved directory also carries the tokenizer the model was trained with, when the model knows it
(:meth:`PretrainedMixin.set_tokenizer`, which the tasks call): ``vocab.txt``,
``tokenizer_config.json`` and ``special_tokens_map.json``. Without them
``transformers.AutoTokenizer`` silently builds a tokenizer of the special tokens alone, and every
bertlib command that takes the directory would need ``--vocab_file`` again.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .config import BertConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
TOKENIZER_FILES = (VOCAB_NAME, TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_MAP_NAME)
_SPECIAL_TOKENS_MAP = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                       "cls_token": "[CLS]", "mask_token": "[MASK]"}

_IGNORED_SUFFIXES = ("position_ids", "token_type_ids")  # non-learned buffers in HF checkpoints
_TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def _canonical(name: str) -> str:
    """Old TF-converted names -> current names."""
    if name.endswith("LayerNorm.gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith("LayerNorm.beta"):
        return name[: -len("beta")] + "bias"
    return name


def map_checkpoint_names(checkpoint_names, model_names):
    """Return ({checkpoint name: model name}, [unused checkpoint names]).

    Each checkpoint name is tried as is, with ``bert.`` added, and with ``bert.`` removed.
    """
    model_names = set(model_names)
    mapping, unused = {}, []
    for name in checkpoint_names:
        canon = _canonical(name)
        if canon.endswith(_IGNORED_SUFFIXES):
            continue
        if canon in _TIED:  # a fallback: from_pretrained prefers the real tensor when both exist
            canon = _TIED[canon]
        candidates = [canon, "bert." + canon, canon[len("bert."):] if canon.startswith("bert.") else None]
        target = next((c for c in candidates if c in model_names), None)
        if target is None:
            unused.append(name)
        else:
            mapping[name] = target
    return mapping, unused


def load_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the safetensors errors do not name the file
        raise ValueError(f"could not read weights from {path}: {exc}") from exc


def resolve_checkpoint_dir(path) -> tuple[Path, Path]:
    """A directory holding config.json + model.safetensors -> (config path, weights path)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if path.is_file():
        raise ValueError(f"{path} is a file; from_pretrained takes a directory with {CONFIG_NAME} "
                         f"and {WEIGHTS_NAME}")
    config, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}")
    if not weights.is_file():
        hint = ""
        if (path / "pytorch_model.bin").exists():
            hint = (" It has pytorch_model.bin: convert it once with transformers "
                    "(`AutoModel.from_pretrained(d).save_pretrained(d, safe_serialization=True)`).")
        raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME}.{hint}")
    return config, weights


def _write_atomic(path: Path, data: bytes):
    # a reader (another rank, a notebook) never sees half a file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_tokenizer_files(path, vocab_file, do_lower_case: bool, model_max_length: int) -> list[Path]:
    """Put BERT's tokenizer files in ``path``: what ``AutoTokenizer.from_pretrained(path)`` reads.

    ``vocab.txt`` is copied from ``vocab_file`` (checked first: it must hold the special tokens);
    ``tokenizer_config.json`` records ``do_lower_case`` (accents are stripped with it, as
    bertlib's tokenizer does) and ``model_max_length`` (the model's position embeddings).
    Returns the paths written.
    """
    import json

    from .tokenization import read_vocab

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    read_vocab(vocab_file)
    source = Path(vocab_file).expanduser()
    target = path / VOCAB_NAME
    if not (target.exists() and target.resolve() == source.resolve()):
        _write_atomic(target, source.read_bytes())
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(do_lower_case),
              "strip_accents": None, "tokenize_chinese_chars": True,
              "model_max_length": int(model_max_length), **_SPECIAL_TOKENS_MAP}
    _write_atomic(path / TOKENIZER_CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    _write_atomic(path / SPECIAL_TOKENS_MAP_NAME,
                  (json.dumps(_SPECIAL_TOKENS_MAP, indent=2) + "\n").encode())
    return [path / name for name in TOKENIZER_FILES]


class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` for the bertlib models (mixed into nn.Module)."""

    @classmethod
    def from_pretrained(cls, path, config: BertConfig | None = None, **config_overrides):
        """Build ``cls`` from a Hugging Face-format directory and copy in its weights.

        ``config_overrides`` (e.g. ``hidden_dropout_prob=0.0``) change fields of the stored config.
        """
        from .runtime import import_oneflow

        flow = import_oneflow()
        config_path, weights_path = resolve_checkpoint_dir(path)
        if config is None:
            config = BertConfig.from_json(config_path)
        if config_overrides:
            config = BertConfig(**{**config.to_dict(), **config_overrides})
        model = cls(config)
        tensors = load_safetensors(weights_path)
        state = model.state_dict()
        mapping, unused = map_checkpoint_names(tensors.keys(), state.keys())
        # the tied decoder duplicates: only a fallback if the real tensor is absent
        loaded = set()
        for ckpt_name, target in sorted(mapping.items(), key=lambda kv: kv[0] in _TIED):
            if ckpt_name in _TIED and target in loaded:
                continue
            array = tensors[ckpt_name]
            expected = tuple(state[target].shape)
            if tuple(array.shape) != expected:
                raise ValueError(
                    f"{weights_path}: tensor {ckpt_name} has shape {tuple(array.shape)}, but the model "
                    f"built from {config_path.name} expects {expected} for {target}"
                )
            state[target] = flow.from_numpy(np.array(array, dtype=np.float32, order="C"))
            loaded.add(target)
        model.load_state_dict(state)
        missing = sorted(set(state) - loaded)
        unused = [u for u in unused if u not in _TIED]
        if missing:
            warnings.warn(
                f"{cls.__name__}: {len(missing)} tensors are not in {weights_path} and keep their fresh "
                f"initialisation (expected for a new task head): {', '.join(missing)}",
                stacklevel=2,
            )
        model.unused_checkpoint_tensors = unused  # e.g. the pooler when loading a SQuAD model
        return model

    def set_tokenizer(self, vocab_file, do_lower_case: bool):
        """Record the vocab and lower-casing this model reads, so that every directory
        :meth:`save_pretrained` writes (checkpoints included) carries the tokenizer files."""
        from .tokenization import read_vocab

        read_vocab(vocab_file)  # a bad vocab fails now, not at the first checkpoint hours later
        # object.__setattr__: a plain value, not something nn.Module should track
        object.__setattr__(self, "tokenizer_source",
                           (str(Path(vocab_file).expanduser().resolve()), bool(do_lower_case)))
        return self

    def save_pretrained(self, path, vocab_file=None, do_lower_case: bool | None = None) -> Path:
        """Write config.json + model.safetensors that ``transformers`` and ``from_pretrained`` read.

        The tokenizer files go with them when ``vocab_file`` is given or :meth:`set_tokenizer`
        was called (``do_lower_case`` None: as recorded there, else True).
        """
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, tensor in self.state_dict().items():
            if getattr(tensor, "is_global", False):
                tensor = tensor.to_local()
            tensors[name] = np.ascontiguousarray(tensor.detach().cpu().numpy())
        word = tensors.get("bert.embeddings.word_embeddings.weight")
        if "cls.predictions.bias" in tensors and word is not None:
            # transformers' BertForPreTraining expects the tied decoder too
            tensors["cls.predictions.decoder.weight"] = word.copy()
            tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"].copy()
        tmp = path / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(path / WEIGHTS_NAME)
        text = self.config.to_json()
        import json

        data = json.loads(text)
        data["architectures"] = [type(self).__name__]
        (path / CONFIG_NAME).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        recorded = getattr(self, "tokenizer_source", None)
        if vocab_file is None and recorded is not None:
            vocab_file = recorded[0]
        if do_lower_case is None:
            do_lower_case = recorded[1] if recorded is not None else True
        if vocab_file is not None:
            save_tokenizer_files(path, vocab_file, do_lower_case, self.config.max_position_embeddings)
        return path
