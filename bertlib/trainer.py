"""The training loop shared by pre-training and SQuAD fine-tuning.

Data parallelism in one paragraph: every process (rank) holds a full replica of the model and reads
its own shards of the data. Each step, every rank computes gradients on its micro-batch; an
all-reduce averages them so that all replicas apply the same update and stay identical. The global
batch is therefore ``world_size x batch_size_per_device x num_accumulation_steps``.

Two ways to run a step:

* ``eager``: ordinary Python, gradients averaged by ``flow.nn.parallel.DistributedDataParallel``
  (with gradient accumulation: one all-reduce per step, after the last micro-batch).
* ``graph``: the step is traced once into a OneFlow ``nn.Graph`` (forward, backward, clipping and
  the optimizer compiled together); across ranks the model is a *global* tensor program —
  parameters ``broadcast`` (replicated) and batches ``split(0)`` (sharded) — and OneFlow inserts the
  all-reduce itself. Mixed precision (``use_fp16``) is a graph feature in OneFlow 0.9.

Determinism: dropout is re-seeded from (seed, step, rank) at every step and the data position is
saved, so N + N steps with a resume in between print the same losses as 2N steps in one run. A
graph fixes its dropout stream when it compiles, so in graph mode the graph is rebuilt after every
checkpoint (see :class:`bertlib.graph.GraphTrainStep`): the 2N run matches when it saved at step N too.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import runtime
from .checkpoint import (check_config_matches, check_resume, load_model_weights,
                         load_optimizer_state, read_checkpoint, save_checkpoint)
from .optim import build_optimizer, warmup_linear_decay
from .runtime import import_oneflow


@dataclass
class TrainOptions:
    iter_num: int                         # optimizer steps to run in total (including resumed ones)
    batch_size_per_device: int            # micro-batch size of one rank
    learning_rate: float = 1e-4           # peak learning rate, reached after warm-up
    weight_decay_rate: float = 0.01       # AdamW/LAMB decay on weight matrices
    warmup_batches: int = 0               # linear warm-up steps, then linear decay to 0 at iter_num
    optimizer: str = "adamw"              # adamw | lamb
    num_accumulation_steps: int = 1       # micro-batches summed into one optimizer step
    clip_grad_norm: float = 1.0           # global L2 norm clip
    seed: int = 12345                     # model init, dropout and data shuffling
    mode: str = "eager"                   # eager | graph
    use_fp16: bool = False                # mixed precision (CUDA + graph only)
    loss_print_every_n_iter: int = 20     # log line period
    model_save_every_n_iter: int = 0      # checkpoint period (0: never)
    save_last_snapshot: bool = False      # checkpoint after the last step
    model_save_dir: str | None = None     # where checkpoints go
    keep_last_n: int | None = None        # keep only the newest N checkpoints (None: all)
    model_load_dir: str | None = None     # checkpoint to resume from
    log_dir: str | None = None            # metrics.jsonl goes here
    progress: bool = True                 # a progress bar when stderr is a terminal
    run_args: dict = field(default_factory=dict)  # recorded in checkpoints


    @classmethod
    def from_options(cls, source, **overrides) -> "TrainOptions":
        """The fields of ``source`` (a task's options object) that TrainOptions has, then ``overrides``."""
        names = [f.name for f in fields(cls)]
        values = {n: getattr(source, n) for n in names if hasattr(source, n)}
        return cls(**{**values, **overrides})


def check_train_values(options, flag_names: Sequence[str] = ()):
    """Raise ValueError on values no run can use: found before launch, not inside the ranks.

    ``options``: any object with the fields of :class:`TrainOptions` (the tasks' options too);
    ``flag_names``: more fields that must be >= 1 when set.
    """
    lr = options.learning_rate
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"--learning_rate must be a finite number > 0 (got {lr})")
    wd = options.weight_decay_rate
    if not (math.isfinite(wd) and wd >= 0):
        raise ValueError(f"--weight_decay_rate must be a finite number >= 0 (got {wd})")
    every = options.model_save_every_n_iter
    if every is not None and every < 0:
        raise ValueError(f"--model_save_every_n_iter must be >= 0, 0 meaning never (got {every})")
    if getattr(options, "seed", 0) < 0:
        raise ValueError(f"--seed must be >= 0 (got {options.seed})")
    for name in ("batch_size_per_device", "num_accumulation_steps", "loss_print_every_n_iter",
                 *flag_names):
        value = getattr(options, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1 (got {value})")
    clip = getattr(options, "clip_grad_norm", 0.0)
    if not (math.isfinite(clip) and clip >= 0):
        raise ValueError(f"clip_grad_norm must be a finite number >= 0 (got {clip})")


def training_mode(mode: str, use_fp16: bool, device: str) -> str:
    """The mode a run with ``--mode``/``--use_fp16`` on ``device`` (auto | cuda | cpu | cuda:N) runs in.

    Raises ValueError for mixed precision off CUDA. Mixed precision runs in graph mode: OneFlow
    0.9's dynamic loss scaler works in nn.Graph only. Callers check this before any rank starts.
    """
    if mode not in ("eager", "graph"):
        raise ValueError(f"--mode must be eager or graph (got {mode!r})")
    if not use_fp16:
        return mode
    if not runtime.wants_cuda(device):
        raise ValueError("--use_fp16 needs a CUDA device: OneFlow 0.9 has no float16 CPU kernels "
                         "for matmul and softmax (run without --use_fp16 on CPU)")
    return "graph"


def _check_options(options: TrainOptions, device: str):
    check_train_values(options, ("iter_num",))
    if options.use_fp16 and not device.startswith("cuda"):
        raise ValueError("--use_fp16 needs a CUDA device: OneFlow 0.9 has no float16 CPU kernels "
                         "for matmul and softmax (run without --use_fp16 on CPU)")
    if options.mode not in ("eager", "graph"):
        raise ValueError(f"--mode must be eager or graph (got {options.mode!r})")
    if options.use_fp16 and options.mode != "graph":
        raise ValueError("--use_fp16 runs in --mode graph (OneFlow 0.9's eager GradScaler cannot "
                         "scale losses); add --mode graph")


BUCKET_BYTES = 64 << 20   # gradients packed per all-reduce (BERT-base's 440 MB: 7 all-reduces)


def average_gradients(params, world: int, bucket_bytes: int = BUCKET_BYTES):
    """Replace every parameter's gradient by its mean over the ``world`` ranks.

    Gradients of at least ``bucket_bytes / 16`` (4 MB: BERT-base's matrices and embeddings, 97% of
    its 440 MB) are all-reduced in place, one collective each. The small ones (biases, LayerNorm:
    ~150 tensors) are packed into flat buffers of up to ``bucket_bytes`` and each buffer is
    all-reduced once: a collective has a fixed cost per call (a kernel launch and a handshake on
    CUDA), and packing costs a copy in and out, which only the small ones are worth.
    """
    flow = import_oneflow()
    grads = [p.grad for p in params if p.grad is not None]
    large = bucket_bytes // 16
    small = []
    for grad in grads:
        if grad.numel() * grad.element_size() >= large:
            flow.comm.all_reduce(grad)
            grad /= world
        else:
            small.append(grad)
    for bucket in _buckets(small, bucket_bytes):
        flat = flow.cat([g.reshape(-1) for g in bucket])                # float32 [sum of sizes]
        flow.comm.all_reduce(flat)
        flat /= world
        for grad, piece in zip(bucket, flow.split(flat, [g.numel() for g in bucket])):
            grad.copy_(piece.reshape(grad.shape))


def _buckets(tensors, limit: int):
    """Consecutive groups of ``tensors`` of at most ``limit`` bytes each (a larger tensor alone)."""
    bucket, size = [], 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


class _LossModule(import_oneflow().nn.Module):
    """model + loss as one module returning a tuple of scalars: the shape OneFlow's DDP hooks accept."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return tuple(self.loss_fn(self.model, batch))


METRICS_FILE = "metrics.jsonl"


def read_metrics(log_dir) -> list[dict]:
    """The records a run logged to ``log_dir`` (rank 0 writes one JSON line per print period)."""
    path = Path(log_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cut_metrics(log_dir, step: int) -> int:
    """Keep the records of iterations before ``step`` (a resumed run logs the rest again); return
    how many were dropped. A killed run's lines past its checkpoint would otherwise stay, then
    repeat. A torn last line (killed mid-write) goes too."""
    path = Path(log_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["iter"] < step
        except (json.JSONDecodeError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += bool(line.strip())
    tmp = path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped


def skip_batches(batches: Iterator[dict], n: int) -> Iterator[dict]:
    """``batches`` after drawing ``n`` of them: where a resumed run's data stream left off."""
    for _ in range(n):
        next(batches)
    return batches


def global_batch_size(batch_size_per_device: int, num_accumulation_steps: int, world_size: int) -> int:
    """Examples per optimizer step over all ranks (see the module docstring)."""
    return world_size * batch_size_per_device * num_accumulation_steps


class Trainer:
    """Runs ``options.iter_num`` optimizer steps of ``loss_fn`` over batches from ``make_batches``.

    Everything the loop needs is set up here: the model on its device (global tensors in graph mode
    across ranks), the optimizer, the resumed state of ``options.model_load_dir``, the module a
    step calls (wrapped for data parallelism) and the step function itself; :meth:`fit` only runs.

    Args:
        model: a bertlib model (already configured; moved to ``device`` here).
        loss_fn: ``loss_fn(model, batch) -> sequence of scalar tensors``; the first is optimised, all
            are logged under ``metric_names``.
        make_batches: ``make_batches()`` -> a fresh iterator of this rank's batches (dicts of
            tensors) from the start of its data; a resumed run skips what it had consumed.
        log_line: formats one log record (dict) as the line printed every print period.
    """

    def __init__(self, model, loss_fn: Callable, make_batches: Callable[[], Iterator[dict]],
                 options: TrainOptions, device: str = "cpu", metric_names: Sequence[str] = ("loss",),
                 log_line: Callable[[dict], str] | None = None,
                 shared_dropout_generator: bool | None = None):
        _check_options(options, device)
        self.flow = import_oneflow()
        self.loss_fn, self.make_batches = loss_fn, make_batches
        self.opt, self.device = options, device
        self.metric_names = tuple(metric_names)
        self.log_line = log_line or (lambda r: f"iter {r['iter']}, " + ", ".join(
            f"{k}: {r[k]:.3f}" for k in self.metric_names))
        self.rank, self.world = runtime.rank(), runtime.world_size()
        self.global_batch = global_batch_size(options.batch_size_per_device,
                                              options.num_accumulation_steps, self.world)
        self.records: list[dict] = []

        self.model = model.to(device)
        self.start_step, self.consumed_batches = 0, 0
        # the weights are loaded while still local: a graph across ranks then replicates them
        resumed = self._resume_weights() if options.model_load_dir else None
        if options.mode == "graph" and self.world > 1:
            # parameters must be global (replicated) before the optimizer is built over them
            from .graph import replicate

            replicate(self.model, device)
        self.optimizer = build_optimizer(self.model, options.optimizer, options.learning_rate,
                                         options.weight_decay_rate)
        self.step_module, self.reduce_after_accumulation = self._data_parallel(
            _LossModule(self.model, loss_fn))
        if shared_dropout_generator is None:
            shared_dropout_generator = options.mode == "eager" and device.startswith("cuda")
        # Seeding a CUDA generator waits for the device to finish its queue. Re-seeding every layer's
        # generator each step would stall the GPU ~37 times a step, so on CUDA all dropout layers
        # draw, one after the other, from one generator re-seeded once a step (still exact on resume).
        self.dropout_generator = None
        if shared_dropout_generator:
            from .model import share_dropout_generator

            self.dropout_generator = share_dropout_generator(self.model, device)
        if options.mode == "eager":
            self.step = self._eager_step
        else:
            from .graph import build_train_graph

            self.step = build_train_graph(
                self.step_module, self.optimizer, iter_num=options.iter_num,
                warmup_batches=options.warmup_batches, accumulation=options.num_accumulation_steps,
                clip_grad_norm=options.clip_grad_norm, use_fp16=options.use_fp16, device=device,
                world=self.world)
        if resumed is not None:
            opt_state = load_optimizer_state(resumed)
            if options.mode == "eager":
                self.optimizer.load_state_dict(opt_state)
            else:
                self.step.load_state_dict(opt_state, device)
            self._print(f"Resumed from {resumed} at iter {self.start_step}")

    def run_state(self) -> dict:
        """What a checkpoint records about the run beside the step (see bertlib.checkpoint)."""
        opt = self.opt
        return {"consumed_batches": self.consumed_batches, "seed": opt.seed, "world_size": self.world,
                "global_batch": self.global_batch, "batch_size_per_device": opt.batch_size_per_device,
                "mode": opt.mode, "iter_num": opt.iter_num, "warmup_batches": opt.warmup_batches,
                "learning_rate": opt.learning_rate, "args": opt.run_args}

    def _resume_weights(self) -> Path:
        """Check ``model_load_dir`` against this run and load its weights; return the checkpoint."""
        opt = self.opt
        ckpt, state = read_checkpoint(opt.model_load_dir)
        notes = check_resume(ckpt, state, iter_num=opt.iter_num, world_size=self.world,
                             global_batch=self.global_batch,
                             batch_size_per_device=opt.batch_size_per_device, mode=opt.mode,
                             warmup_batches=opt.warmup_batches, learning_rate=opt.learning_rate)
        from .config import BertConfig
        from .weights import CONFIG_NAME

        check_config_matches(BertConfig.from_json(ckpt / "model" / CONFIG_NAME), self.model.config, ckpt)
        load_model_weights(self.model, ckpt / "model")
        self.start_step, self.consumed_batches = state["step"], state["consumed_batches"]
        for note in notes:
            self._print(f"note: {note}")
        return ckpt

    def _data_parallel(self, step_module):
        """(module a step calls, parameters whose gradients to average by hand after the backward
        passes, or None).

        Not OneFlow's DistributedDataParallel: it all-reduces after every micro-batch, and it
        holds every gradient in buckets of its own for the whole run, so the gradients (BERT-base:
        440 MB per rank) can never be freed between steps. Averaging once, after the last
        micro-batch (:func:`average_gradients`), is the same update for 1/acc of the traffic, and
        the gradients exist only from the backward pass to the optimizer step.
        """
        flow = self.flow
        if self.world == 1 or self.opt.mode == "graph":   # a graph inserts its own all-reduce
            return step_module, None
        # replicas start identical: every rank takes rank 0's weights
        with flow.no_grad():   # in place on a leaf that requires grad would make it a non-leaf
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                flow.comm.broadcast(tensor, 0)
        return step_module, [p for p in self.model.parameters() if p.requires_grad]

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> list[dict]:
        opt = self.opt
        if opt.log_dir and self.rank == 0:
            # a new run starts a new log; a resumed one continues its own from the checkpoint's step
            cut_metrics(opt.log_dir, self.start_step)
        batches = skip_batches(self.make_batches(), self.consumed_batches)
        self.model.train()
        bar = self._progress_bar(self.start_step)
        sums, n_in_interval, t0 = None, 0, time.perf_counter()
        for step in range(self.start_step, opt.iter_num):
            lr = opt.learning_rate * warmup_linear_decay(step, opt.warmup_batches, opt.iter_num)
            if opt.mode == "eager":  # a graph carries the same schedule inside (bertlib.graph)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            if opt.mode == "eager" or step == self.start_step:
                # a graph reads its dropout seeds once, when it compiles (at its first step)
                self._reseed_dropout(step)
            metrics = self.step(batches)                     # float32 [M], this step's metrics
            self.consumed_batches += opt.num_accumulation_steps
            sums = metrics if sums is None else sums + metrics
            n_in_interval += 1
            if bar is not None:
                bar.update(1)
            last = step + 1 == opt.iter_num
            if (step + 1) % opt.loss_print_every_n_iter == 0 or last:
                self._log(step, sums, n_in_interval, t0, lr, bar)
                sums, n_in_interval, t0 = None, 0, time.perf_counter()
            if self._save_due(step + 1, last):
                t_save = time.perf_counter()
                self._save(step + 1)
                if opt.mode == "graph" and not last:
                    # a graph's dropout stream restarts where a resume from here would restart it
                    self._reseed_dropout(step + 1)
                    self.step.restart(self.device)
                t0 += time.perf_counter() - t_save  # saving is not training speed
        if bar is not None:
            bar.close()
        return self.records

    def _save_due(self, done: int, last: bool) -> bool:
        opt = self.opt
        every = opt.model_save_every_n_iter and done % opt.model_save_every_n_iter == 0
        return bool(opt.model_save_dir) and bool(every or (last and opt.save_last_snapshot))

    def _reseed_dropout(self, step):
        """Seed the dropout layers from (seed, step, rank): a resumed run draws the same masks."""
        from .model import reseed_dropout

        seed = (self.opt.seed * 1_000_003 + step * self.world + self.rank) * 1_009
        if self.dropout_generator is not None:
            self.dropout_generator.manual_seed(seed)
        else:
            reseed_dropout(self.model, seed)

    def _eager_step(self, batches):
        flow, acc = self.flow, self.opt.num_accumulation_steps
        total = None
        for _ in range(acc):
            outs = self.step_module(next(batches))
            (outs[0] / acc).backward()
            detached = flow.stack([o.detach() for o in outs]) / acc
            total = detached if total is None else total + detached
        if self.reduce_after_accumulation:
            average_gradients(self.reduce_after_accumulation, self.world)
        if self.opt.clip_grad_norm:
            flow.nn.utils.clip_grad_norm_(self.model.parameters(), self.opt.clip_grad_norm)
        self.optimizer.step()
        # freed, not zeroed: the next forward pass reuses their memory for its activations
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # ----------------------------------------------------------------------- logging and saving
    def _log(self, step, sums, n, t0, lr, bar):
        flow = self.flow
        values = sums / n
        if self.world > 1:
            values = values.to_local() if values.is_global else values
            flow.comm.all_reduce(values)
            values = values / self.world
        # reading the values waits for the device (OneFlow runs ops asynchronously, on CUDA and on
        # the CPU alike), so the clock read after it counts all of the interval's work
        values = values.cpu().numpy().tolist()
        sec_per_batch = (time.perf_counter() - t0) / n
        record = {"iter": step, **dict(zip(self.metric_names, values)),
                  "sec_per_batch": sec_per_batch,
                  "sentences_per_sec": self.global_batch / sec_per_batch,
                  "learning_rate": lr,
                  # this interval's speed over the steps left (checkpoint saving not counted)
                  "eta_seconds": (self.opt.iter_num - step - 1) * sec_per_batch,
                  "time": time.time()}
        self.records.append(record)
        if self.rank == 0:
            line = self.log_line(record)
            if bar is not None:
                bar.write(line)
            else:
                print(line, flush=True)
            if self.opt.log_dir:
                Path(self.opt.log_dir).mkdir(parents=True, exist_ok=True)
                with open(Path(self.opt.log_dir) / METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")

    def _save(self, step):
        # a graph's state is gathered by every rank (a collective); rank 0 alone writes
        opt_state = self.step.state_dict() if self.opt.mode == "graph" else self.optimizer
        if self.rank == 0:
            path = save_checkpoint(self.opt.model_save_dir, step, self.model, opt_state,
                                   self.run_state())
            self._print(f"Saved checkpoint {path}")
            if self.opt.keep_last_n:
                from .checkpoint import prune_checkpoints

                for old in prune_checkpoints(self.opt.model_save_dir, self.opt.keep_last_n):
                    self._print(f"Removed checkpoint {old} (--keep_last_n {self.opt.keep_last_n})")
        if self.world > 1:
            self.flow.comm.barrier()

    def _progress_bar(self, start):
        tty = sys.stderr.isatty() or os.environ.get("BERTLIB_STDERR_IS_TTY") == "1"
        if not (self.opt.progress and self.rank == 0 and tty):
            return None
        from tqdm import tqdm

        return tqdm(total=self.opt.iter_num, initial=start, unit="iter", dynamic_ncols=True, leave=False)

    def _print(self, text):
        if self.rank == 0:
            print(text, flush=True)
