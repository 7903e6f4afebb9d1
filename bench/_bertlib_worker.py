"""One bertlib training configuration, timed; run by bench/pretrain_throughput.py (1 process or a rank).

The product's own training step over synthetic batches: bertlib.trainer.Trainer with
BertForPreTraining and bertlib.tasks.pretraining's step loss (MLM logits at the masked positions:
20 at sequence length 128, scaled with ``--seq-len``), AdamW from bertlib.optim (weight decay 0.01
on matrices, eps 1e-6), fp32, dropout 0.1, in ``--mode eager`` or ``graph`` as ``bert-pretrain
--mode`` runs them. The step times are the Trainer's own ``sec_per_batch``, logged every step.

Writes ``{out}/rank{r}.json`` with the step times, CPU seconds and this process's peak RSS.
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import _common  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(_common.CONFIGS))
    ap.add_argument("--mode", default="eager", choices=["eager", "graph"])
    ap.add_argument("--seq-len", type=int, default=_common.SEQ_LEN, help="tokens per example")
    ap.add_argument("--global-batch", type=int, required=True)
    ap.add_argument("--micro-batch", type=int, required=True, help="examples per process per pass")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--builtin-kernels", action="store_true",
                    help="use OneFlow's built-in layer_norm/gelu/softmax (to measure the kernels lever)")
    ap.add_argument("--mlm-everywhere", action="store_true",
                    help="MLM logits at all positions, then gathered (to measure the gather-first lever)")
    ap.add_argument("--out", required=True)
    return ap.parse_args()


def main():
    args = parse_args()

    from bertlib import runtime
    flow = runtime.import_oneflow()
    from bertlib.config import BertConfig
    from bertlib.model import BertForPreTraining, gather_positions, pretraining_loss
    from bertlib.tasks.pretraining import METRIC_NAMES, log_line, pretraining_step_loss
    from bertlib.trainer import Trainer, TrainOptions

    rank, world = runtime.rank(), runtime.world_size()
    per_rank = args.global_batch // world
    if per_rank * world != args.global_batch or per_rank % args.micro_batch:
        raise SystemExit(f"global batch {args.global_batch} must be processes ({world}) x micro-batch "
                         f"({args.micro_batch}) x accumulation")
    acc = per_rank // args.micro_batch

    flow.manual_seed(1234)    # same initial weights on every rank
    kernels = "reference" if args.builtin_kernels else "auto"
    model = BertForPreTraining(BertConfig(**_common.CONFIGS[args.config], kernels=kernels))

    def mlm_everywhere_loss(model, batch):
        """The lever's step: MLM logits at all positions, then gathered at the masked ones."""
        out = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"])
        logits = gather_positions(out.prediction_logits, batch["masked_lm_positions"])   # [B, P, V]
        return pretraining_loss(logits, out.seq_relationship_logits, batch["masked_lm_ids"],
                                batch["masked_lm_weights"], batch["next_sentence_labels"], kernels=kernels)

    # a few different batches per rank, cycled (data generation stays out of the timing), named
    # and shaped as bertlib.loaders.PretrainingLoader yields them
    names = {"token_type_ids": "segment_ids", "attention_mask": "input_mask"}
    micro_batches = []
    for v in _common.synthetic_batches(_common.CONFIGS[args.config], per_rank, 3, seed=100 + rank,
                                       seq_len=args.seq_len):
        v["next_sentence_labels"] = v["next_sentence_labels"].reshape(-1, 1)
        for i in range(acc):
            rows = slice(i * args.micro_batch, (i + 1) * args.micro_batch)
            micro_batches.append({names.get(k, k): flow.tensor(a[rows]) for k, a in v.items()})
    marks = []   # (wall, cpu, sys) when each step draws its first micro-batch

    def make_batches():
        for n, batch in enumerate(itertools.cycle(micro_batches)):
            if n % acc == 0:
                marks.append((time.perf_counter(), _common.cpu_seconds(), _common.sys_seconds()))
            yield batch

    # the product's step: bertlib.trainer.Trainer as bert-pretrain runs it, logging (and so waiting
    # for) every step; no gradient clipping, as the PyTorch worker does none (same work)
    options = TrainOptions(
        iter_num=args.warmup + args.steps, batch_size_per_device=args.micro_batch,
        num_accumulation_steps=acc, learning_rate=_common.LEARNING_RATE,
        weight_decay_rate=_common.WEIGHT_DECAY, warmup_batches=0, clip_grad_norm=0.0, seed=1234,
        mode=args.mode, loss_print_every_n_iter=1, progress=False)
    trainer = Trainer(model, mlm_everywhere_loss if args.mlm_everywhere else pretraining_step_loss,
                      make_batches, options, device="cpu", metric_names=METRIC_NAMES,
                      log_line=log_line)
    records = trainer.fit()
    marks.append((time.perf_counter(), _common.cpu_seconds(), _common.sys_seconds()))
    timed = records[args.warmup:]
    deltas = [[b - a for a, b in zip(marks[i], marks[i + 1])] for i in range(args.warmup, len(marks) - 1)]
    result = dict(
        framework="bertlib", config=args.config, seq_len=args.seq_len, mode=args.mode, processes=world, threads=1,
        global_batch=args.global_batch, micro_batch=args.micro_batch, accumulation=acc,
        builtin_kernels=args.builtin_kernels, mlm_everywhere=args.mlm_everywhere,
        env={k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD")},
        warmup_s=sum(r["sec_per_batch"] for r in records[:args.warmup]),
        step_s=[r["sec_per_batch"] for r in timed],
        step_s_median=statistics.median(r["sec_per_batch"] for r in timed),
        cpu_s=[d[1] for d in deltas], sys_s=[d[2] for d in deltas],
        losses=[r["total_loss"] for r in records], peak_rss_mb=_common.peak_rss_mb(),
        oneflow=flow.__version__)
    _common.write_json(os.path.join(args.out, f"rank{rank}.json"), result)


if __name__ == "__main__":
    from bertlib.launch import fail_fast

    fail_fast(main)
