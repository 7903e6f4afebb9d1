"""Training checkpoints: everything needed to resume exactly, written so a crash never loses one.

A checkpoint is a directory ``<model_save_dir>/step_<N>/`` holding

* ``model/``            the weights in Hugging Face format (config.json + model.safetensors), so any
                        checkpoint is also an export that ``from_pretrained`` and ``transformers`` read;
* ``optimizer/``        the optimiser's moments and step counters (``flow.save``);
* ``trainer_state.json`` the step, the number of batches consumed per rank (the data position), the
                        seed and the command-line arguments.

It is first written as ``.step_<N>.tmp`` and renamed into place: renaming a directory is atomic, so a
crash while saving leaves the previous checkpoints intact and never a half-written ``step_<N>``.
``<model_save_dir>/latest`` names the newest complete checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import BertConfig
from .runtime import import_oneflow
from .weights import CONFIG_NAME, WEIGHTS_NAME, load_safetensors, map_checkpoint_names

STATE_NAME = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be resumed from; the message names the path and the problem."""


def save_checkpoint(save_dir, step: int, model, optimizer, state: dict) -> Path:
    """Write ``step_<step>`` atomically and point ``latest`` at it. Call on rank 0 only."""
    flow = import_oneflow()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    final = save_dir / f"step_{step}"
    tmp = save_dir / f".step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # debris of an earlier crash
    model.save_pretrained(tmp / "model")
    flow.save(optimizer.state_dict(), str(tmp / "optimizer"))
    (tmp / STATE_NAME).write_text(json.dumps({"step": step, **state}, indent=2, sort_keys=True) + "\n")
    if final.exists():
        # flow.save into an existing directory leaves stale files; replace the whole thing
        old = save_dir / f".step_{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    latest_tmp = save_dir / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, save_dir / "latest")
    return final


def resolve_checkpoint(path) -> Path:
    """``path`` may be a checkpoint (``step_N``) or a ``model_save_dir`` with a ``latest`` pointer."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--model_load_dir {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"--model_load_dir {path} is a file, not a checkpoint directory")
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    elif not (path / STATE_NAME).exists() and not (path / CONFIG_NAME).exists():
        steps = sorted(path.glob("step_*"), key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)
        if not steps:
            raise CheckpointError(f"--model_load_dir {path} holds no checkpoint (no step_*/ and no {STATE_NAME})")
        path = steps[-1]
    return path


def _check_complete(ckpt: Path):
    needed = [ckpt / STATE_NAME, ckpt / "model" / CONFIG_NAME, ckpt / "model" / WEIGHTS_NAME,
              ckpt / "optimizer"]
    missing = [str(p.relative_to(ckpt)) for p in needed if not p.exists()]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: missing {', '.join(missing)}")


def check_config_matches(ckpt_config: BertConfig, config: BertConfig, where: Path):
    diffs = [f"{k}: checkpoint {v} vs run {getattr(config, k)}"
             for k, v in ckpt_config.to_dict().items()
             if k not in ("hidden_dropout_prob", "attention_probs_dropout_prob") and getattr(config, k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {where} was made with a different model: " + "; ".join(diffs))


def load_model_weights(model, weights_dir: Path):
    """Copy the tensors of ``weights_dir/model.safetensors`` into ``model`` (all of them must fit)."""
    flow = import_oneflow()
    import numpy as np

    tensors = load_safetensors(weights_dir / WEIGHTS_NAME)
    state = model.state_dict()
    mapping, _ = map_checkpoint_names(tensors.keys(), state.keys())
    for name, target in mapping.items():
        if tuple(tensors[name].shape) != tuple(state[target].shape):
            raise CheckpointError(f"{weights_dir / WEIGHTS_NAME}: {name} has shape {tensors[name].shape}, "
                                  f"the model expects {tuple(state[target].shape)}")
        state[target] = flow.from_numpy(np.array(tensors[name], dtype=np.float32, order="C"))
    missing = set(state) - set(mapping.values())
    if missing:
        raise CheckpointError(f"{weights_dir / WEIGHTS_NAME} lacks {', '.join(sorted(missing))}")
    model.load_state_dict(state)


def load_checkpoint(path, model, optimizer, config: BertConfig) -> dict:
    """Restore ``model`` and ``optimizer`` from a checkpoint; return its trainer state."""
    flow = import_oneflow()
    ckpt = resolve_checkpoint(path)
    _check_complete(ckpt)
    try:
        state = json.loads((ckpt / STATE_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt / STATE_NAME} is corrupt: {exc}") from exc
    check_config_matches(BertConfig.from_json(ckpt / "model" / CONFIG_NAME), config, ckpt)
    load_model_weights(model, ckpt / "model")
    try:
        opt_state = flow.load(str(ckpt / "optimizer"))
    except Exception as exc:  # noqa: BLE001 - OneFlow's errors here name neither file nor cause
        raise CheckpointError(f"cannot read optimizer state in {ckpt / 'optimizer'}: "
                              f"{type(exc).__name__}: {exc}") from exc
    optimizer.load_state_dict(opt_state)
    state["path"] = str(ckpt)
    return state


def prune_checkpoints(save_dir, keep_last_n: int) -> list[Path]:
    """Delete all but the ``keep_last_n`` highest-numbered ``step_N`` of ``save_dir``; return them.

    The checkpoint ``latest`` names is never deleted, even when it is not among the highest
    numbers (a run resumed from an earlier step saves smaller numbers again). Each one is renamed
    to a hidden name before it is removed, so a crash midway never leaves a half-deleted
    ``step_N`` that looks like a checkpoint. Call on rank 0 only.
    """
    if keep_last_n < 1:
        raise ValueError(f"keep_last_n must be >= 1 (got {keep_last_n})")
    save_dir = Path(save_dir)
    steps = sorted((p for p in save_dir.glob("step_*")
                    if p.is_dir() and p.name[len("step_"):].isdigit()),
                   key=lambda p: int(p.name[len("step_"):]))
    pointer = save_dir / "latest"
    latest = pointer.read_text().strip() if pointer.is_file() else None
    removed = []
    for path in steps[:-keep_last_n]:
        if path.name == latest:
            continue
        doomed = save_dir / f".{path.name}.deleting"
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
        shutil.rmtree(doomed)
        removed.append(path)
    return removed
