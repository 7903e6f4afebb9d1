"""Training checkpoints: everything needed to resume exactly, written so a crash never loses one.

A checkpoint is a directory ``<model_save_dir>/step_<N>/`` holding

* ``model/``            the weights in Hugging Face format (config.json + model.safetensors), so any
                        checkpoint is also an export that ``from_pretrained`` and ``transformers`` read;
* ``optimizer/``        the optimiser's state (``flow.save``): in eager mode the optimizer's
                        ``state_dict()``; in graph mode the compiled graph's own state (the Adam
                        moments, the train step that drives the learning-rate schedule, and the loss
                        scale under ``use_fp16``), which a graph keeps outside any optimizer object;
* ``trainer_state.json`` the step, the number of batches consumed per rank (the data position), the
                        run's shape (world size, global batch, mode) and schedule, the seed and the
                        command-line arguments: every field of :data:`STATE_FIELDS`.

It is first written as ``.step_<N>.tmp``, fsynced, and renamed into place: renaming a directory is
atomic, so a crash while saving leaves the previous checkpoints intact and never a half-written
``step_<N>``. ``<model_save_dir>/latest`` names the newest complete checkpoint; when it names one that
is missing or incomplete the newest complete ``step_<N>`` is used instead.

:func:`read_checkpoint` and :func:`check_resume` are what a launching process calls before any rank
starts; :func:`guard_run_dir` claims a directory for one live run (see its docstring).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from .config import BertConfig
from .runtime import import_oneflow
from .weights import CONFIG_NAME, WEIGHTS_NAME, load_safetensors, map_checkpoint_names

STATE_NAME = "trainer_state.json"
OPTIMIZER_DIR = "optimizer"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# every field a resume needs, with its JSON type: a checkpoint lacking one cannot resume exactly
STATE_FIELDS = {
    "step": int, "consumed_batches": int, "seed": int, "world_size": int, "global_batch": int,
    "batch_size_per_device": int, "mode": str, "iter_num": int, "warmup_batches": int,
    "learning_rate": (int, float), "args": dict,
}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be resumed from; the message names the path and the problem."""


# ------------------------------------------------------------------------------------------ saving
def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path):
    """Every file, then every directory: a rename is only a safe commit once what it names is on disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
    for dirpath, _, _ in os.walk(root, topdown=False):
        _fsync(Path(dirpath))


def _write_synced(path: Path, text: str):
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(save_dir, step: int, model, optimizer, state: dict) -> Path:
    """Write ``step_<step>`` atomically and point ``latest`` at it. Call on rank 0 only.

    ``optimizer``: the optimizer, or the state dict to save (graph mode: the graph's state as local
    tensors, see :meth:`bertlib.graph.GraphTrainStep.state_dict`).
    """
    flow = import_oneflow()
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = save_dir / f"step_{step}", save_dir / f".step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # debris of an earlier crash
    try:
        model.save_pretrained(tmp / "model")
        opt_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        flow.save(opt_state, str(tmp / OPTIMIZER_DIR))
        _write_synced(tmp / STATE_NAME, json.dumps({"step": step, **state}, indent=2, sort_keys=True) + "\n")
        _fsync_tree(tmp)
    except BaseException:
        # a disk that filled up mid-save must not stay full of our half-written copy
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        # flow.save into an existing directory leaves stale files; replace the whole thing
        old = save_dir / f".step_{step}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        _fsync(save_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _write_synced(save_dir / ".latest.tmp", final.name + "\n")
    os.replace(save_dir / ".latest.tmp", save_dir / "latest")
    _fsync(save_dir)
    return final


# ----------------------------------------------------------------------------------------- finding
def _missing_parts(ckpt: Path) -> list[str]:
    needed = [STATE_NAME, f"model/{CONFIG_NAME}", f"model/{WEIGHTS_NAME}", OPTIMIZER_DIR]
    return [name for name in needed if not (ckpt / name).exists()]


def step_dirs(save_dir) -> list[Path]:
    """The ``step_<N>`` directories of ``save_dir``, newest (highest N) first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in save_dir.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _newest_complete(save_dir: Path) -> Path | None:
    return next((p for p in step_dirs(save_dir) if not _missing_parts(p)), None)


def _note(text: str):
    from . import runtime

    if runtime.is_main_process():
        print(f"note: {text}", file=sys.stderr, flush=True)


def resolve_checkpoint(path) -> Path:
    """``path`` may be a checkpoint (``step_N``) or a ``model_save_dir`` with a ``latest`` pointer.

    A ``latest`` naming a missing or incomplete checkpoint (a crash between two renames, a deleted
    directory) falls back to the newest complete ``step_N``, with a note on stderr.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"--model_load_dir {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"--model_load_dir {path} is a file, not a checkpoint directory")
    if (path / "latest").is_file():
        name = (path / "latest").read_text().strip()
        target = path / name
        if target.is_dir() and not _missing_parts(target):
            return target
        fallback = _newest_complete(path)
        if fallback is None:
            if target.is_dir():
                return target  # read_checkpoint names what it lacks
            raise CheckpointError(f"{path / 'latest'} names {name}, which does not exist, and {path} "
                                  "holds no other complete checkpoint")
        _note(f"{path / 'latest'} names {name}, which is missing or incomplete; resuming from "
              f"{fallback.name}, the newest complete checkpoint")
        return fallback
    if not (path / STATE_NAME).exists() and not (path / CONFIG_NAME).exists():
        steps = step_dirs(path)
        if not steps:
            raise CheckpointError(f"--model_load_dir {path} holds no checkpoint (no step_*/ and no {STATE_NAME})")
        return _newest_complete(path) or steps[0]
    return path


def _check_field(state_path: Path, state: dict, name: str, types):
    if name not in state:
        raise CheckpointError(f"{state_path} lacks the field {name!r}: not a complete bertlib checkpoint")
    value = state[name]
    if isinstance(value, bool) or not isinstance(value, types):
        expected = "a number" if isinstance(types, tuple) else {int: "an integer", str: "a string",
                                                                 dict: "an object"}[types]
        raise CheckpointError(f"{state_path}: field {name!r} is {value!r}, expected {expected}")
    if types is int and value < (1 if name in ("world_size", "global_batch", "batch_size_per_device",
                                                "iter_num") else 0):
        raise CheckpointError(f"{state_path}: field {name!r} is {value}, out of range")
    if name == "mode" and value not in ("eager", "graph"):
        raise CheckpointError(f"{state_path}: field 'mode' is {value!r}, expected eager or graph")


def read_checkpoint(path) -> tuple[Path, dict]:
    """(checkpoint directory, its trainer state), checked complete and well-formed (every field)."""
    ckpt = resolve_checkpoint(path)
    missing = _missing_parts(ckpt)
    if missing:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete: missing {', '.join(missing)}")
    state_path = ckpt / STATE_NAME
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{state_path} is corrupt: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path} is corrupt: not a JSON object")
    for name, types in STATE_FIELDS.items():
        _check_field(state_path, state, name, types)
    return ckpt, state


def check_resume(ckpt: Path, state: dict, *, iter_num: int, world_size: int, global_batch: int,
                 batch_size_per_device: int, mode: str, warmup_batches: int,
                 learning_rate: float) -> list[str]:
    """Refuse a resume that cannot continue the checkpoint's run; return notes on what changes.

    Refused (CheckpointError): nothing left to train; another number of processes, global batch or
    micro-batch (each rank's data position is a count of its own micro-batches, so any of these
    would resume on other data); another mode (the optimizer state's format differs). Accepted,
    with a note: another iter_num, warm-up or learning rate (the schedule from the step on changes).
    """
    where, step = f"checkpoint {ckpt}", state["step"]
    if iter_num <= step:
        raise CheckpointError(f"--iter_num {iter_num} is not beyond the step of {where} ({step}): "
                              f"nothing would be trained; pass an --iter_num above {step}")
    for name, value, label, why in (
            ("world_size", world_size, "processes", "each process's data position is saved on its own"),
            ("global_batch", global_batch, "global batch",
             "batch_size_per_device x num_accumulation_steps x processes; the data positions assume it"),
            ("batch_size_per_device", batch_size_per_device, "--batch_size_per_device",
             "a data position counts micro-batches of that size")):
        if state[name] != value:
            raise CheckpointError(f"{where} was made with {label} {state[name]}, this run has {value} "
                                  f"({why}): resume with {state[name]}")
    if state["mode"] != mode:
        raise CheckpointError(f"{where} was saved in --mode {state['mode']} (its optimizer state is in "
                              f"that mode's format): resume it with --mode {state['mode']}")
    changed = [f"{name} {state[name]} -> {new}" for name, new in
               (("iter_num", iter_num), ("warmup_batches", warmup_batches), ("learning_rate", learning_rate))
               if state[name] != new]
    if not changed or _same_schedule_until(step, state, iter_num, warmup_batches, learning_rate):
        # e.g. N steps then a resume to 2N with a warm-up shorter than N: the first N learning
        # rates are those of a 2N run, so the resumed run is that run exactly
        return []
    return [f"resuming {where} with another schedule ({', '.join(changed)}): its first {step} steps "
            "had other learning rates than this schedule gives them, so the losses will differ from "
            f"an uninterrupted run of these settings (and from step {step} on, from the original run's)"]


def _same_schedule_until(step: int, state: dict, iter_num: int, warmup: int, lr: float) -> bool:
    from .optim import warmup_linear_decay

    return all(abs(state["learning_rate"] * warmup_linear_decay(s, state["warmup_batches"], state["iter_num"])
                   - lr * warmup_linear_decay(s, warmup, iter_num)) <= 1e-9 * lr for s in range(step))


# ----------------------------------------------------------------------------------------- loading
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


def load_optimizer_state(ckpt: Path) -> dict:
    """The ``optimizer/`` state of a checkpoint, as local tensors."""
    flow = import_oneflow()
    try:
        return flow.load(str(ckpt / OPTIMIZER_DIR))
    except Exception as exc:  # noqa: BLE001 - OneFlow's errors here name neither file nor cause
        raise CheckpointError(f"cannot read optimizer state in {ckpt / OPTIMIZER_DIR}: "
                              f"{type(exc).__name__}: {exc}") from exc


def load_checkpoint(path, model, optimizer, config: BertConfig) -> dict:
    """Restore ``model`` and an eager ``optimizer`` from a checkpoint; return its trainer state."""
    ckpt, state = read_checkpoint(path)
    check_config_matches(BertConfig.from_json(ckpt / "model" / CONFIG_NAME), config, ckpt)
    load_model_weights(model, ckpt / "model")
    optimizer.load_state_dict(load_optimizer_state(ckpt))
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
