"""One bertlib training configuration, timed; run by bench/pretrain_throughput.py (1 process or a rank).

A minimal loop over synthetic batches: BertForPreTraining (MLM logits at the 20 masked positions),
bertlib.model.pretraining_loss, AdamW from bertlib.optim (weight decay 0.01 on matrices, eps 1e-6),
fp32, dropout 0.1. ``--mode eager`` averages gradients across ranks with one all-reduce per step
(DistributedDataParallel when there is one micro-batch per step); ``--mode graph`` compiles the
whole step with nn.Graph (global tensors across ranks, as bertlib.graph does).

Writes ``{out}/rank{r}.json`` with the step times and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import _common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(_common.CONFIGS))
    ap.add_argument("--mode", default="eager", choices=["eager", "graph"])
    ap.add_argument("--global-batch", type=int, required=True)
    ap.add_argument("--micro-batch", type=int, required=True, help="examples per process per pass")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--builtin-kernels", action="store_true",
                    help="use OneFlow's built-in layer_norm/gelu/softmax (to measure the kernels lever)")
    ap.add_argument("--mlm-everywhere", action="store_true",
                    help="MLM logits at all positions, then gathered (to measure the gather-first lever)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from bertlib import runtime
    flow = runtime.import_oneflow()
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining, gather_positions, pretraining_loss
    from bertlib.optim import build_optimizer
    from bertlib.trainer import average_gradients

    rank, world = runtime.rank(), runtime.world_size()
    per_rank = args.global_batch // world
    if per_rank * world != args.global_batch or per_rank % args.micro_batch:
        raise SystemExit(f"global batch {args.global_batch} must be processes ({world}) x micro-batch "
                         f"({args.micro_batch}) x accumulation")
    acc = per_rank // args.micro_batch

    flow.manual_seed(1234)    # same initial weights on every rank
    kernels = "reference" if args.builtin_kernels else "auto"
    cfg = BertConfig(**_common.CONFIGS[args.config], kernels=kernels)
    model = BertForPreTraining(cfg)
    model.train()
    if args.mode == "graph" and world > 1:
        # across processes a graph works on global tensors: parameters held whole by every rank
        placement = flow.placement("cpu", ranks=list(range(world)))
        model.to_global(placement=placement, sbp=flow.sbp.broadcast)
    optimizer = build_optimizer(model, "adamw", _common.LEARNING_RATE, _common.WEIGHT_DECAY)
    keys = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")

    class WithLoss(flow.nn.Module):
        """model + loss in one module: DDP's hooks want tensors out of forward."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            b = dict(zip(keys, tensors))
            if args.mlm_everywhere:
                out = self.model(b["input_ids"], b["token_type_ids"], b["attention_mask"])
                logits = gather_positions(out.prediction_logits, b["masked_lm_positions"])   # [B, P, V]
            else:
                out = self.model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["masked_lm_positions"])
                logits = out.prediction_logits
            return pretraining_loss(logits, out.seq_relationship_logits, b["masked_lm_ids"],
                                    b["masked_lm_weights"], b["next_sentence_labels"], kernels=kernels)[0]

    with_loss = WithLoss()

    # a few different batches per rank, cycled (data generation stays out of the timing)
    pool = _common.synthetic_batches(_common.CONFIGS[args.config], per_rank, 3, seed=100 + rank)

    if args.mode == "eager":
        batches = [[[flow.tensor(v[k][i * args.micro_batch:(i + 1) * args.micro_batch]) for k in keys]
                    for i in range(acc)] for v in pool]
        ddp = world > 1 and acc == 1
        step_model = flow.nn.parallel.DistributedDataParallel(with_loss) if ddp else with_loss
        params = [p for p in model.parameters() if p.requires_grad]

        def step(i):
            total = None
            for micro in batches[i % len(batches)]:
                loss = step_model(*micro)
                (loss / acc if acc > 1 else loss).backward()
                total = loss if total is None else total + loss
            if world > 1 and not ddp:
                # one all-reduce per step after accumulation (DDP would reduce after every pass)
                average_gradients(params, world)
            optimizer.step()
            optimizer.zero_grad()
            return total
    else:
        placement = flow.placement("cpu", ranks=list(range(world))) if world > 1 else None

        class Step(flow.nn.Graph):
            def __init__(self):
                super().__init__()
                self.with_loss = with_loss
                self.add_optimizer(optimizer)
                if acc > 1:
                    self.config.set_gradient_accumulation_steps(acc)

            def build(self, *tensors):
                loss = self.with_loss(*tensors)
                loss.backward()
                return loss

        graph = Step()
        batches = []
        for v in pool:
            tensors = [flow.tensor(v[k]) for k in keys]
            if placement is not None:
                tensors = [t.to_global(placement=placement, sbp=flow.sbp.split(0)) for t in tensors]
            batches.append(tensors)

        def step(i):
            return graph(*batches[i % len(batches)])

    probe = next(model.parameters())

    def synced(i):
        loss = step(i)
        if loss.is_global:
            loss = loss.to_global(sbp=flow.sbp.broadcast).to_local()
        value = float(loss.numpy().sum())
        (probe.to_local() if probe.is_global else probe).numpy()  # waits for the optimizer update
        return value

    t0 = time.perf_counter()
    losses = [synced(i) for i in range(args.warmup)]
    warmup_s = time.perf_counter() - t0
    times, cpu, sys_s = [], [], []
    for i in range(args.warmup, args.warmup + args.steps):
        t0, c0, s0 = time.perf_counter(), _common.cpu_seconds(), _common.sys_seconds()
        losses.append(synced(i))
        times.append(time.perf_counter() - t0)
        cpu.append(_common.cpu_seconds() - c0)
        sys_s.append(_common.sys_seconds() - s0)
    result = dict(
        framework="bertlib", config=args.config, mode=args.mode, processes=world, threads=1,
        global_batch=args.global_batch, micro_batch=args.micro_batch, accumulation=acc,
        builtin_kernels=args.builtin_kernels, mlm_everywhere=args.mlm_everywhere,
        env={k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD")},
        warmup_s=warmup_s, step_s=times,
        step_s_median=statistics.median(times), cpu_s=cpu, sys_s=sys_s, losses=losses, peak_rss_mb=_common.peak_rss_mb(),
        oneflow=flow.__version__)
    _common.write_json(os.path.join(args.out, f"rank{rank}.json"), result)


if __name__ == "__main__":
    from bertlib.launch import fail_fast

    fail_fast(main)
