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
saved, so N + N steps with a resume in between print the same losses as 2N steps in one run.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import runtime
from .checkpoint import load_checkpoint, save_checkpoint
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
    model_load_dir: str | None = None     # checkpoint to resume from
    log_dir: str | None = None            # metrics.jsonl goes here
    progress: bool = True                 # a progress bar when stderr is a terminal
    run_args: dict = field(default_factory=dict)  # recorded in checkpoints


def average_gradients(params, world: int):
    """Replace every parameter's gradient by its mean over the ``world`` ranks (one all-reduce each)."""
    flow = import_oneflow()
    for param in params:
        if param.grad is not None:
            flow.comm.all_reduce(param.grad)
            param.grad /= world


class _LossModule(import_oneflow().nn.Module):
    """model + loss as one module returning a tuple of scalars: the shape OneFlow's DDP hooks accept."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return tuple(self.loss_fn(self.model, batch))


class Trainer:
    """Runs ``options.iter_num`` optimizer steps of ``loss_fn`` over batches from ``make_batches``.

    Args:
        model: a bertlib model (already configured; moved to ``device`` here).
        loss_fn: ``loss_fn(model, batch) -> sequence of scalar tensors``; the first is optimised, all
            are logged under ``metric_names``.
        make_batches: ``make_batches(skip)`` -> iterator of batches (dicts of tensors) for this
            rank, having skipped ``skip`` batches (the data position of a resumed run).
        log_line: formats one log record (dict) as the line printed every print period.
    """

    def __init__(self, model, loss_fn: Callable, make_batches: Callable[[int], Iterator[dict]],
                 options: TrainOptions, device: str = "cpu", metric_names: Sequence[str] = ("loss",),
                 log_line: Callable[[dict], str] | None = None):
        self.flow = import_oneflow()
        self.model, self.loss_fn, self.make_batches = model, loss_fn, make_batches
        self.opt, self.device = options, device
        self.metric_names = tuple(metric_names)
        self.log_line = log_line or (lambda r: f"iter {r['iter']}, " + ", ".join(
            f"{k}: {r[k]:.3f}" for k in self.metric_names))
        self.rank, self.world = runtime.rank(), runtime.world_size()
        self.records: list[dict] = []
        if options.use_fp16 and not device.startswith("cuda"):
            raise ValueError("--use_fp16 needs a CUDA device: OneFlow 0.9 has no float16 CPU kernels "
                             "for matmul and softmax (run without --use_fp16 on CPU)")
        if options.mode not in ("eager", "graph"):
            raise ValueError(f"--mode must be eager or graph (got {options.mode!r})")
        if options.use_fp16 and options.mode != "graph":
            raise ValueError("--use_fp16 runs in --mode graph (OneFlow 0.9's eager GradScaler cannot "
                             "scale losses); add --mode graph")

    @property
    def global_batch(self) -> int:
        return self.world * self.opt.batch_size_per_device * self.opt.num_accumulation_steps

    # ---------------------------------------------------------------------------------- the loop
    def fit(self) -> list[dict]:
        flow, opt = self.flow, self.opt
        model = self.model.to(self.device)
        if opt.mode == "graph" and self.world > 1:
            # parameters must be global (replicated) before the optimizer is built over them
            from .graph import replicate

            replicate(model, self.device)
        optimizer = build_optimizer(model, opt.optimizer, opt.learning_rate, opt.weight_decay_rate)
        start_step, consumed = 0, 0
        if opt.model_load_dir:
            state = load_checkpoint(opt.model_load_dir, model, optimizer, model.config)
            start_step, consumed = state["step"], state["consumed_batches"]
            self._print(f"Resumed from {state['path']} at iter {start_step}")
        self.step_module = _LossModule(model, self.loss_fn)
        self._reduce_after_accumulation = None
        if self.world > 1 and opt.mode == "eager":
            if opt.num_accumulation_steps == 1:
                # replicas start identical (rank 0's weights are broadcast) and gradients are averaged
                self.step_module = flow.nn.parallel.DistributedDataParallel(self.step_module)
            else:
                # DDP would all-reduce after every micro-batch; averaging once, after the last one,
                # is the same update for 1/acc of the traffic (BERT-base: 440 MB, ~0.9 s on 2 CPU ranks)
                with flow.no_grad():   # in place on a leaf that requires grad would make it a non-leaf
                    for tensor in list(model.parameters()) + list(model.buffers()):
                        flow.comm.broadcast(tensor, 0)
                self._reduce_after_accumulation = [p for p in model.parameters() if p.requires_grad]
        step_fn = self._eager_step if opt.mode == "eager" else self._graph_step_fn(model, optimizer)
        if opt.log_dir and self.rank == 0 and start_step == 0:
            # a new run starts a new log; a resumed one continues its own
            (Path(opt.log_dir) / "metrics.jsonl").unlink(missing_ok=True)
        batches = self.make_batches(consumed)
        model.train()
        bar = self._progress_bar(start_step)
        sums, n_in_interval, t0 = None, 0, time.perf_counter()
        for step in range(start_step, opt.iter_num):
            lr = opt.learning_rate * warmup_linear_decay(step, opt.warmup_batches, opt.iter_num)
            if opt.mode == "eager":  # a graph carries the same schedule inside (bertlib.graph)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            self._reseed_dropout(model, step)
            metrics = step_fn(model, optimizer, batches)        # float32 [M], this step's metrics
            consumed += opt.num_accumulation_steps
            sums = metrics if sums is None else sums + metrics
            n_in_interval += 1
            if bar is not None:
                bar.update(1)
            last = step + 1 == opt.iter_num
            if (step + 1) % opt.loss_print_every_n_iter == 0 or last:
                elapsed = time.perf_counter() - t0
                self._log(step, sums, n_in_interval, elapsed, lr, bar)
                sums, n_in_interval, t0 = None, 0, time.perf_counter()
            if opt.model_save_dir and ((opt.model_save_every_n_iter and (step + 1) % opt.model_save_every_n_iter == 0)
                                       or (last and opt.save_last_snapshot)):
                t_save = time.perf_counter()
                self._save(step + 1, model, optimizer, consumed)
                t0 += time.perf_counter() - t_save  # saving is not training speed
        if bar is not None:
            bar.close()
        return self.records

    def _reseed_dropout(self, model, step):
        """Give every dropout layer a seed derived from (seed, step, rank, layer index).

        OneFlow's nn.Dropout draws from a generator of its own, created with a random seed, so
        ``flow.manual_seed`` does not reach it; re-seeding per step makes a resumed run exact.
        """
        if not hasattr(self, "_dropouts"):
            self._dropouts = [m for m in model.modules() if isinstance(m, self.flow.nn.Dropout)]
        base = (self.opt.seed * 1_000_003 + step * self.world + self.rank) * 1_009
        for index, module in enumerate(self._dropouts):
            # bertlib's Dropout also restarts its CPU mask stream (bertlib.kernels.dropout)
            seed = getattr(module, "manual_seed", module.generator.manual_seed)
            seed(base + index)

    def _eager_step(self, model, optimizer, batches):
        flow, acc = self.flow, self.opt.num_accumulation_steps
        total = None
        for _ in range(acc):
            outs = self.step_module(next(batches))
            (outs[0] / acc).backward()
            detached = flow.stack([o.detach() for o in outs]) / acc
            total = detached if total is None else total + detached
        if self._reduce_after_accumulation:
            average_gradients(self._reduce_after_accumulation, self.world)
        if self.opt.clip_grad_norm:
            flow.nn.utils.clip_grad_norm_(model.parameters(), self.opt.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return total

    def _graph_step_fn(self, model, optimizer):
        from .graph import build_train_graph

        return build_train_graph(self, model, optimizer)

    # ----------------------------------------------------------------------- logging and saving
    def _log(self, step, sums, n, elapsed, lr, bar):
        flow = self.flow
        values = sums / n
        if self.world > 1:
            values = values.to_local() if values.is_global else values
            flow.comm.all_reduce(values)
            values = values / self.world
        values = values.cpu().numpy().tolist()
        sec_per_batch = elapsed / n
        record = {"iter": step, **dict(zip(self.metric_names, values)),
                  "sec_per_batch": sec_per_batch,
                  "sentences_per_sec": self.global_batch / sec_per_batch,
                  "learning_rate": lr, "time": time.time()}
        self.records.append(record)
        if self.rank == 0:
            line = self.log_line(record)
            if bar is not None:
                bar.write(line)
            else:
                print(line, flush=True)
            if self.opt.log_dir:
                Path(self.opt.log_dir).mkdir(parents=True, exist_ok=True)
                with open(Path(self.opt.log_dir) / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")

    def _save(self, step, model, optimizer, consumed):
        if self.rank == 0:
            path = save_checkpoint(self.opt.model_save_dir, step, model, optimizer,
                                   {"consumed_batches": consumed, "seed": self.opt.seed,
                                    "world_size": self.world, "args": self.opt.run_args})
            self._print(f"Saved checkpoint {path}")
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
