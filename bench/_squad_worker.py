"""One bertlib SQuAD measurement, timed; run by bench/squad_throughput.py (1 process or a rank).

``--task predict``: bertlib.tasks.squad.predict_raw_results itself, the prediction loop of
``bert-squad --do_eval`` (eval OFRecords -> windows of similar length in batches cut to their
longest window -> BertForQuestionAnswering in eval mode under no_grad -> start/end logits as
numpy), over synthetic eval OFRecords written first: ``--warmup`` batches per process, untimed,
then ``--steps`` batches per process, timed as one pass. Under N processes every rank predicts its
share (record ``i`` goes to rank ``i % N``), as bert-squad does; ``--batch`` is the batch per
process.

``--task train``: bertlib.trainer.Trainer with bertlib.tasks.squad.squad_step_loss as
``bert-squad --do_train`` runs it (eager, AdamW lr 3e-5, weight decay 0.01, gradient clipping at
norm 1.0, dropout 0.1) over synthetic windows; ``--batch`` is the global batch. The step times are
the Trainer's own ``sec_per_batch``.

Both on a freshly initialised BertForQuestionAnswering of the named size (weights do not change
the speed). Writes ``{out}/rank{r}.json`` with the times, CPU seconds and this process's peak RSS.
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

LEARNING_RATE = 3e-5      # bert-squad's default
CLIP_GRAD_NORM = 1.0      # bert-squad's (TrainOptions' default)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(_common.CONFIGS))
    ap.add_argument("--task", required=True, choices=["predict", "train"])
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--batch", type=int, required=True, help="predict: per process; train: global batch")
    ap.add_argument("--micro-batch", type=int, default=None, help="train: examples per process per pass")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--lengths", default="squad-dev", choices=_common.WINDOW_LENGTHS)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", required=True)
    return ap.parse_args()


def predict(args, flow, model, rank, world):
    import numpy as np

    from bertlib.ofrecord import write_shards
    from bertlib.tasks.squad import predict_raw_results

    cfg = _common.CONFIGS[args.config]

    def eval_data(name, count, seed):
        w = _common.squad_windows(cfg, count, args.seq_len, seed=seed, lengths=args.lengths)
        records = ({"input_ids": w["input_ids"][i].astype(np.int32),
                    "input_mask": w["attention_mask"][i].astype(np.int32),
                    "segment_ids": w["token_type_ids"][i].astype(np.int32), "unique_ids": np.array([i], np.int32)}
                   for i in range(count))
        data_dir = os.path.join(args.out, f"{name}-rank{rank}")
        write_shards(records, data_dir, world)   # bert-squad makes one part per process
        mine = w["attention_mask"][rank::world]  # the records this rank predicts (i % world == rank)
        return data_dir, len(mine), _common.predict_flops(cfg, mine, args.batch, trimmed=True)

    warm_dir, _, _ = eval_data("warmup", world * args.batch * args.warmup, seed=199)
    timed_dir, count, flops = eval_data("eval", world * args.batch * args.steps, seed=200)
    t0 = time.perf_counter()
    predict_raw_results(model, warm_dir, args.batch, "cpu", rank, world)
    warmup_s = time.perf_counter() - t0
    if world > 1:
        flow.comm.barrier()                      # the processes predict at the same time, as in bert-squad
    t0, c0, w0 = time.perf_counter(), _common.cpu_seconds(), time.time()
    uids, starts, _ = predict_raw_results(model, timed_dir, args.batch, "cpu", rank, world)
    seconds, cpu = time.perf_counter() - t0, _common.cpu_seconds() - c0
    if len(uids) != count or starts.shape[1] != args.seq_len:
        raise SystemExit(f"predicted {len(uids)} windows of {starts.shape}, expected {count}")
    return dict(step_s=[seconds], step_s_median=seconds, cpu_s=[cpu], windows_per_s=count / seconds,
                timed_windows=count, timed_from=w0, timed_to=time.time(), flops=flops, warmup_s=warmup_s,
                micro_batch=args.batch, accumulation=1)


def train(args, flow, model, rank, world):
    from bertlib.tasks.squad import log_line, squad_step_loss
    from bertlib.trainer import Trainer, TrainOptions

    per_rank = args.batch // world
    micro = args.micro_batch or per_rank
    if per_rank * world != args.batch or per_rank % micro:
        raise SystemExit(f"global batch {args.batch} must be processes ({world}) x micro-batch ({micro}) x "
                         "accumulation")
    acc = per_rank // micro
    cfg = _common.CONFIGS[args.config]
    names = {"token_type_ids": "segment_ids", "attention_mask": "input_mask"}
    micro_batches = []   # a few different batches, cycled: data generation stays out of the timing
    for k in range(3):
        w = _common.squad_windows(cfg, per_rank, args.seq_len, seed=300 + 10 * rank + k, lengths=args.lengths)
        for i in range(acc):
            rows = slice(i * micro, (i + 1) * micro)
            micro_batches.append({names.get(key, key): flow.tensor(a[rows]) for key, a in w.items()})
    marks = []

    def make_batches():
        for n, batch in enumerate(itertools.cycle(micro_batches)):
            if n % acc == 0:
                marks.append((time.perf_counter(), _common.cpu_seconds()))
            yield batch

    options = TrainOptions(
        iter_num=args.warmup + args.steps, batch_size_per_device=micro, num_accumulation_steps=acc,
        learning_rate=LEARNING_RATE, weight_decay_rate=0.01, warmup_batches=0, clip_grad_norm=CLIP_GRAD_NORM,
        seed=12345, mode="eager", loss_print_every_n_iter=1, progress=False)
    records = Trainer(model, squad_step_loss, make_batches, options, device="cpu", metric_names=("loss",),
                      log_line=log_line).fit()
    marks.append((time.perf_counter(), _common.cpu_seconds()))
    timed = records[args.warmup:]
    cpu = [marks[i + 1][1] - marks[i][1] for i in range(args.warmup, len(marks) - 1)]
    return dict(warmup_s=sum(r["sec_per_batch"] for r in records[:args.warmup]),
                step_s=[r["sec_per_batch"] for r in timed],
                step_s_median=statistics.median(r["sec_per_batch"] for r in timed), cpu_s=cpu,
                losses=[r["loss"] for r in records], micro_batch=micro, accumulation=acc)


def main():
    args = parse_args()

    from bertlib import runtime
    flow = runtime.import_oneflow()
    from bertlib.config import BertConfig
    from bertlib.model import BertForQuestionAnswering

    rank, world = runtime.rank(), runtime.world_size()
    flow.manual_seed(1234)    # same initial weights on every rank
    model = BertForQuestionAnswering(BertConfig(**_common.CONFIGS[args.config]))
    result = (predict if args.task == "predict" else train)(args, flow, model, rank, world)
    result.update(framework="bertlib", task=args.task, config=args.config, seq_len=args.seq_len, processes=world,
                  threads=1, batch=args.batch, peak_rss_mb=_common.peak_rss_mb(), oneflow=flow.__version__)
    _common.write_json(os.path.join(args.out, f"rank{rank}.json"), result)


if __name__ == "__main__":
    from bertlib.launch import fail_fast

    fail_fast(main)
