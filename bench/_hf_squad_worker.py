"""Hugging Face transformers BertForQuestionAnswering on PyTorch (CPU), timed; runs in the reference venv.

``--task predict``: eval mode under ``torch.no_grad()``, batches of ``--batch`` windows, start and
end logits brought out as numpy (as bertlib's prediction loop does): ``--warmup`` batches untimed,
then ``--steps`` batches timed as one pass. Every window is padded to ``--seq-len`` as
transformers' run_qa.py does by default, or with ``--trim`` sorted by length and cut per batch as
bertlib does.
``--task train``: the model's own loss (mean of the start and end cross-entropies) with
``start_positions`` / ``end_positions``, ``--batch`` windows per optimizer step in micro-batches of
``--micro-batch``, fused AdamW (lr 3e-5, weight decay 0.01 on matrices), gradient clipping at norm
1.0, dropout 0.1: the work of ``bert-squad --do_train``.

Same synthetic windows as bertlib's worker (bench/_common.py), threads = cores
(``torch.set_num_threads``), one process. Writes ``{out}/hf.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402
import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(_common.CONFIGS))
    ap.add_argument("--task", required=True, choices=["predict", "train"])
    ap.add_argument("--seq-len", type=int, default=384)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="squad-dev", choices=_common.WINDOW_LENGTHS)
    ap.add_argument("--trim", action="store_true",
                    help="predict: windows sorted by length, each batch cut to its longest (bertlib's way)")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import BertConfig, BertForQuestionAnswering

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    config = _common.CONFIGS[args.config]
    model = BertForQuestionAnswering(BertConfig(**config))
    times, cpu = [], []
    extra = {}
    if args.task == "predict":
        model.eval()
        warm = _common.squad_windows(config, args.batch * args.warmup, args.seq_len, seed=199, lengths=args.lengths)
        w = _common.squad_windows(config, args.batch * args.steps, args.seq_len, seed=200, lengths=args.lengths)
        mask = w["attention_mask"]

        def predict(w):
            n = len(w["input_ids"])
            if args.trim:      # longest first, each batch cut to its longest window (as bertlib)
                plan = _common.trimmed_batches(w["attention_mask"], args.batch)
            else:              # every window padded to --seq-len (run_qa.py's default, pad_to_max_length)
                plan = [(np.arange(i, min(i + args.batch, n)), args.seq_len) for i in range(0, n, args.batch)]
            for rows, cut in plan:
                feed = {k: torch.from_numpy(w[k][rows, :cut])
                        for k in ("input_ids", "token_type_ids", "attention_mask")}
                with torch.no_grad():
                    out = model(**feed)
                out.start_logits.numpy(), out.end_logits.numpy()

        for windows in (warm, w):       # the warm-up pass, then the timed one
            t0, c0 = time.perf_counter(), _common.cpu_seconds()
            predict(windows)
            times.append(time.perf_counter() - t0)
            cpu.append(_common.cpu_seconds() - c0)
        extra.update(windows_per_s=len(mask) / times[-1], timed_windows=len(mask), trimmed=args.trim,
                     flops=_common.predict_flops(config, mask, args.batch, trimmed=args.trim))
        micro, acc = args.batch, 1
    else:
        model.train()
        micro = args.micro_batch or args.batch
        acc = args.batch // micro
        if acc * micro != args.batch:
            raise SystemExit("the batch must be a multiple of the micro-batch")
        optimizer, extra["fused_adamw"] = _common.torch_adamw(model, 3e-5, weight_decay=0.01)
        pool = []
        for k in range(3):
            w = _common.squad_windows(config, args.batch, args.seq_len, seed=300 + k, lengths=args.lengths)
            w["start_positions"], w["end_positions"] = w["start_positions"][:, 0], w["end_positions"][:, 0]
            pool.append([{key: torch.from_numpy(v[i * micro:(i + 1) * micro].copy()) for key, v in w.items()}
                         for i in range(acc)])
        losses = []
        for step in range(args.warmup + args.steps):
            t0, c0 = time.perf_counter(), _common.cpu_seconds()
            total = 0.0
            for feed in pool[step % len(pool)]:
                loss = model(**feed).loss
                (loss / acc if acc > 1 else loss).backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
            cpu.append(_common.cpu_seconds() - c0)
            losses.append(total / acc)
        extra["losses"] = losses
    skip = 1 if args.task == "predict" else args.warmup   # prediction's warm-up is one pass
    timed = times[skip:]
    result = dict(framework="hf", task=args.task, config=args.config, seq_len=args.seq_len, processes=1,
                  threads=args.threads, batch=args.batch, micro_batch=micro, accumulation=acc,
                  warmup_s=sum(times[:skip]), step_s=timed, step_s_median=statistics.median(timed),
                  cpu_s=cpu[skip:], peak_rss_mb=_common.peak_rss_mb(), torch=torch.__version__,
                  transformers=transformers.__version__,
                  attn_implementation=getattr(model.config, "_attn_implementation", None), **extra)
    _common.write_json(os.path.join(args.out, "hf.json"), result)


if __name__ == "__main__":
    main()
