"""Hugging Face transformers BertForPreTraining on PyTorch (CPU), timed; runs in the reference venv.

Two variants of the same pre-training step (same config, batches, AdamW, fp32, dropout 0.1):

* ``gathered`` (a): the work bertlib does. The encoder runs on all tokens, the MLM head
  (transform + tied decoder) only on the gathered masked positions (20 at sequence length 128), weighted cross-entropy
  sum(w * CE) / sum(w) plus the NSP cross-entropy.
* ``full`` (b): ``BertForPreTraining`` as users call it: MLM logits at all positions and
  ``labels`` = -100 everywhere but the masked positions.

Threads = cores (``torch.set_num_threads``), one process: PyTorch's own way to use every core.
Writes ``{out}/hf-{variant}.json`` with step times, CPU seconds and peak RSS.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, choices=sorted(_common.CONFIGS))
    ap.add_argument("--variant", required=True, choices=["gathered", "full"])
    ap.add_argument("--seq-len", type=int, default=_common.SEQ_LEN, help="tokens per example")
    ap.add_argument("--global-batch", type=int, required=True)
    ap.add_argument("--micro-batch", type=int, required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import BertConfig, BertForPreTraining

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    config = _common.CONFIGS[args.config]
    model = BertForPreTraining(BertConfig(**config))
    model.train()
    optimizer, fused = _common.torch_adamw(model, _common.LEARNING_RATE)

    acc = args.global_batch // args.micro_batch
    if acc * args.micro_batch != args.global_batch:
        raise SystemExit("global batch must be a multiple of the micro-batch")
    pool = _common.synthetic_batches(config, args.global_batch, 3, seed=100, seq_len=args.seq_len)
    H = config["hidden_size"]
    ce = torch.nn.functional.cross_entropy

    def tensors(np_batch, i):
        sl = slice(i * args.micro_batch, (i + 1) * args.micro_batch)
        return {k: torch.from_numpy(v[sl].copy()) for k, v in np_batch.items()}

    batches = [[tensors(b, i) for i in range(acc)] for b in pool]
    if args.variant == "full":
        for step_batches in batches:
            for b in step_batches:
                labels = torch.full_like(b["input_ids"], -100)
                labels.scatter_(1, b["masked_lm_positions"], b["masked_lm_ids"])
                b["labels"] = labels

    def loss_of(b):
        if args.variant == "full":
            out = model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                        attention_mask=b["attention_mask"], labels=b["labels"],
                        next_sentence_label=b["next_sentence_labels"])
            return out.loss
        seq, pooled = model.bert(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                                 attention_mask=b["attention_mask"], return_dict=False)[:2]
        pos = b["masked_lm_positions"]
        gathered = torch.gather(seq, 1, pos.unsqueeze(-1).expand(-1, -1, H))      # [B, P, H]
        scores = model.cls.predictions(gathered)                                  # [B, P, V]
        nsp = model.cls.seq_relationship(pooled)                                  # [B, 2]
        w = b["masked_lm_weights"].reshape(-1)
        per_token = ce(scores.reshape(-1, scores.shape[-1]), b["masked_lm_ids"].reshape(-1), reduction="none")
        mlm = (per_token * w).sum() / w.sum().clamp(min=1e-5)
        return mlm + ce(nsp, b["next_sentence_labels"])

    def step(i):
        total = 0.0
        for b in batches[i % len(batches)]:
            loss = loss_of(b)
            (loss / acc if acc > 1 else loss).backward()
            total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    t0 = time.perf_counter()
    losses = [step(i) for i in range(args.warmup)]
    warmup_s = time.perf_counter() - t0
    times, cpu = [], []
    for i in range(args.warmup, args.warmup + args.steps):
        t0, c0 = time.perf_counter(), _common.cpu_seconds()
        losses.append(step(i))
        times.append(time.perf_counter() - t0)
        cpu.append(_common.cpu_seconds() - c0)
    result = dict(framework="hf", variant=args.variant, config=args.config, seq_len=args.seq_len, processes=1,
                  threads=args.threads, global_batch=args.global_batch, micro_batch=args.micro_batch,
                  accumulation=acc, fused_adamw=fused, warmup_s=warmup_s, step_s=times,
                  step_s_median=statistics.median(times), cpu_s=cpu, losses=losses,
                  peak_rss_mb=_common.peak_rss_mb(), torch=torch.__version__,
                  transformers=transformers.__version__,
                  attn_implementation=getattr(model.config, "_attn_implementation", None))
    _common.write_json(os.path.join(args.out, f"hf-{args.variant}.json"), result)


if __name__ == "__main__":
    main()
