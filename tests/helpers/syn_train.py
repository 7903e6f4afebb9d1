"""A small, fully deterministic training job for the trainer tests (run directly or under the launcher).

Batches are synthetic but shaped exactly like the pre-training schema; every rank draws its own
stream, and ``skip`` replays the stream's position as a resumed run must.
"""
import argparse
import json
import os
import signal

import numpy as np

from bertlib import runtime
from bertlib.launch import fail_fast

flow = runtime.import_oneflow()

from bertlib.tasks.pretraining import log_line, pretraining_step_loss  # noqa: E402
from bertlib.config import BertConfig  # noqa: E402
from bertlib.model import BertForPreTraining  # noqa: E402
from bertlib.trainer import Trainer, TrainOptions  # noqa: E402

V, S, P, B = 300, 24, 4, 4


def batches(fail_step=None, kill=False, micro=B):
    """Batches of B examples, each yielded as B // micro micro-batches (the same examples either way).

    A resumed run's Trainer draws and drops the batches it had consumed, as it does from a loader."""
    rng = np.random.RandomState(1000 + runtime.rank())
    index = 0
    while True:
        if fail_step is not None and index == fail_step:
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"synthetic failure at batch {index}")
        mask = np.ones((B, S), np.int64)
        mask[:, S - 3:] = 0  # some padding, as real data has
        batch = {"input_ids": rng.randint(5, V, (B, S)) * mask,
                 "segment_ids": (np.arange(S)[None] >= S // 2).repeat(B, 0).astype(np.int64) * mask,
                 "input_mask": mask,
                 "masked_lm_positions": rng.randint(1, S - 3, (B, P)),
                 "masked_lm_ids": rng.randint(5, V, (B, P)),
                 "masked_lm_weights": np.ones((B, P), np.float32),
                 "next_sentence_labels": rng.randint(0, 2, (B, 1))}
        for start in range(0, B, micro):
            yield {k: flow.tensor(v[start:start + micro]) for k, v in batch.items()}
            index += 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--load", default=None)
    p.add_argument("--save_dir", default=None)
    p.add_argument("--save_every", type=int, default=0)
    p.add_argument("--mode", default="eager")
    p.add_argument("--fail_rank", type=int, default=None)
    p.add_argument("--fail_step", type=int, default=None)
    p.add_argument("--kill", action="store_true")
    p.add_argument("--out", default=None, help="rank 0 writes its log records here as JSON")
    p.add_argument("--accumulation", type=int, default=1, help="micro-batches of B / accumulation per step")
    p.add_argument("--no_dropout", action="store_true")
    p.add_argument("--kernels", default="auto", help="BertConfig.kernels")
    p.add_argument("--shared_dropout_generator", action="store_true",
                   help="every dropout layer draws from one generator (what eager CUDA runs do)")
    args = p.parse_args()
    flow.manual_seed(7)
    drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) if args.no_dropout else {}
    model = BertForPreTraining(BertConfig.tiny(vocab_size=V, hidden_size=32, intermediate_size=64,
                                               max_position_embeddings=S, kernels=args.kernels,
                                               **drop))
    micro = B // args.accumulation
    fail = args.fail_step if args.fail_rank == runtime.rank() else None
    options = TrainOptions(iter_num=args.iters, batch_size_per_device=micro,
                           num_accumulation_steps=args.accumulation, learning_rate=1e-3,
                           warmup_batches=2, loss_print_every_n_iter=1, mode=args.mode,
                           model_save_every_n_iter=args.save_every, model_save_dir=args.save_dir,
                           model_load_dir=args.load, progress=False)
    trainer = Trainer(model, pretraining_step_loss, lambda: batches(fail, args.kill, micro), options,
                      metric_names=("total_loss", "mlm_loss", "nsp_loss"), log_line=log_line,
                      shared_dropout_generator=args.shared_dropout_generator or None)
    records = trainer.fit()
    if args.out and runtime.rank() == 0:
        with open(args.out, "w") as f:
            json.dump(records, f)


if __name__ == "__main__":
    fail_fast(main)
