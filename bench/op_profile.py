#!/usr/bin/env python3
"""Where a bertlib training step spends its time on this CPU (one process, eager).

Three views of a training step, each printed as a markdown table (or, with ``--predict S``, one of
SQuAD prediction: the time of an eager forward under no_grad per kind of module):

1. the step: forward, backward, optimizer (CPU seconds, synchronised around each part);
2. one encoder layer, forward + backward: the whole layer and each of its pieces timed alone at the
   same shapes (matmuls, GELU, LayerNorm, dropout, softmax, permutes, residual adds);
3. each op of bertlib.fast against OneFlow's built-in at the model's shapes (fwd + bwd, ms); for
   the NumPy attention core, against the same maths written with OneFlow ops (its graph path).

    python bench/op_profile.py --config base --batch 8
    python bench/op_profile.py --config tiny --batch 32
    python bench/op_profile.py --config minilm --batch 64 --predict 176   # SQuAD prediction instead

Times are the minimum over repetitions (least disturbed by other load on the machine).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import _common  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="base", choices=sorted(_common.CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kernels", default="auto", choices=["auto", "fast", "reference"],
                    help="BertConfig.kernels for the step and the layer (views 1 and 2)")
    ap.add_argument("--predict", type=int, default=None, metavar="S",
                    help="instead: where SQuAD prediction spends its time, BertForQuestionAnswering under no_grad "
                         "on --batch windows of S tokens (a batch bertlib.squad.logits cut to S)")
    args = ap.parse_args()

    from bertlib.config import BertConfig
    from bertlib.runtime import import_oneflow

    flow = import_oneflow()
    cfg = BertConfig(**_common.CONFIGS[args.config], kernels=args.kernels)
    rate = sgemm_gflops(flow)
    if args.predict:
        print(f"# {args.config} prediction, batch {args.batch} x {args.predict} tokens, one process, kernels "
              f"{args.kernels}; OneFlow sgemm {rate:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f}\n")
        profile_prediction(flow, cfg, args, rate)
        return
    print(f"# {args.config}, batch {args.batch} x {_common.SEQ_LEN} tokens, one process, kernels {args.kernels}; "
          f"sgemm {rate:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f}\n")
    profile_step(flow, cfg, args, rate)
    profile_layer(flow, cfg, args, rate)
    profile_ops(flow, cfg, args)


def best_of(flow, fn, reps: int) -> float:
    """Minimum wall time of ``fn()`` over ``reps`` runs after one warm-up (allocations, constants)."""
    sync = flow._oneflow_internal.eager.Sync
    fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def fwd_bwd(flow, fn, shapes, reps: int, extra=None) -> float:
    """Seconds of ``fn(*random tensors of shapes[, extra])`` forward + backward (ones upstream)."""
    tensors = [flow.randn(*sh, requires_grad=True) for sh in shapes]

    def run():
        out = fn(*tensors) if extra is None else fn(*tensors, extra)
        out.backward(flow.ones_like(out))
        for t in tensors:
            t.grad = None
    return best_of(flow, run, reps)


def profile_step(flow, cfg, args, rate):
    """View 1: forward, backward and optimizer step of BertForPreTraining, synchronised around each."""
    from bertlib import model as M
    from bertlib.optim import build_optimizer

    sync = flow._oneflow_internal.eager.Sync
    flow.manual_seed(0)
    model = M.BertForPreTraining(cfg).train()
    opt = build_optimizer(model, "adamw", 1e-4, 0.01)
    arrays = _common.synthetic_batches(_common.CONFIGS[args.config], args.batch, 1, 0)[0]
    batch = {k: flow.tensor(v) for k, v in arrays.items()}

    def forward():
        out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["masked_lm_positions"])
        return M.pretraining_loss(out.prediction_logits, out.seq_relationship_logits, batch["masked_lm_ids"],
                                  batch["masked_lm_weights"], batch["next_sentence_labels"], kernels=args.kernels)[0]

    parts = {"forward": [], "backward": [], "optimizer step": []}
    for i in range(args.reps + 1):
        sync()
        t0 = time.perf_counter()
        loss = forward()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        sync()
        t3 = time.perf_counter()
        if i:
            for name, t in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[name].append(t)
    flops = _common.flops_per_sample(_common.CONFIGS[args.config]) * args.batch
    step = sum(min(v) for v in parts.values())
    print("| part of the step | s | share |\n|---|---:|---:|")
    for name, v in parts.items():
        print(f"| {name} | {min(v):.3f} | {100 * min(v) / step:.0f}% |")
    print(f"| total | {step:.3f} | matmul FLOPs alone at {rate:.0f} GFLOP/s: {flops / rate / 1e9:.3f} s |\n")


def profile_prediction(flow, cfg, args, rate):
    """View 4 (``--predict S``): one eager forward of BertForQuestionAnswering under no_grad, time per
    kind of module (synchronised around each), the matmuls counted wherever they run."""
    import numpy as np

    from bertlib.fast import layers, numpy_ops
    from bertlib.model import BertEmbeddings, BertForQuestionAnswering

    sync = flow._oneflow_internal.eager.Sync
    spent = {}

    def timed(fn, label):
        def run(*a, **kw):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
            return out
        return run

    # module classes patched for this process only; the attention core and the matmul (Q/K/V and
    # output projections, FFN, QA head) are functions called from inside the modules
    patches = [(layers.LayerNorm, "forward", "LayerNorm"), (layers.GELU, "forward", "GELU"),
               (BertEmbeddings, "forward", "embeddings"), (numpy_ops, "attention_inference", "attention core"),
               (numpy_ops, "linear", "matmuls (+ bias)")]
    for owner, name, label in patches:
        setattr(owner, name, timed(getattr(owner, name), label))
    flow.manual_seed(0)
    model = BertForQuestionAnswering(cfg).eval()
    B, S = args.batch, args.predict
    ids = flow.tensor(np.random.RandomState(0).randint(1000, cfg.vocab_size, (B, S)))
    types, mask = flow.zeros_like(ids), flow.ones_like(ids)
    for _ in range(args.reps + 1):    # the first run warms up; the last run's times are printed
        spent.clear()
        sync()
        t0 = time.perf_counter()
        with flow.no_grad():
            model(ids, types, mask).start_logits.numpy()
        total = time.perf_counter() - t0
    flops = _common.squad_forward_flops(_common.CONFIGS[args.config], S) * B
    numpy_rate = numpy_sgemm_gflops()     # the BLAS the matmuls run on here
    rate = max(rate, numpy_rate)
    print(f"NumPy sgemm 2048^3: {numpy_rate:.0f} GFLOP/s\n")
    print(f"| part of the forward (last of {args.reps} runs) | s | share |\n|---|---:|---:|")
    for label, t in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {t:.3f} | {100 * t / total:.0f}% |")
    print(f"| the rest (residual adds, mask, reshapes) | {total - sum(spent.values()):.3f} | "
          f"{100 * (total - sum(spent.values())) / total:.0f}% |")
    print(f"| total | {total:.3f} | {B / total:.1f} windows/s; model FLOPs at {rate:.0f} GFLOP/s: "
          f"{flops / rate / 1e9:.3f} s |\n")


def profile_layer(flow, cfg, args, rate):
    """View 2: one encoder layer, then each of its pieces alone at the same shapes (fwd + bwd)."""
    from bertlib import fast
    from bertlib import model as M
    from bertlib.fast import numpy_ops, oneflow_ops as ops

    B, S = args.batch, _common.SEQ_LEN
    H, I, N = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    D = H // N
    layer = M.BertLayer(cfg).train()
    if args.kernels != "reference":   # a bare block is not a BertPreTrainedModel: swap the fast path in here
        fast.use_fast_kernels(layer, args.kernels)
    mask = flow.zeros(B, 1, 1, S)
    attn_dropout = fast.Dropout.adopt(flow.nn.Dropout(0.1), "auto")
    hidden_dropout = fast.Dropout.adopt(flow.nn.Dropout(0.1), "auto")

    def timed(fn, *shapes):
        return fwd_bwd(flow, fn, shapes, args.reps)

    full = timed(lambda t: layer(t, mask)[0], (B, S, H))
    pieces = {
        "Q, K, V, output, FFN matmuls (+ bias)": sum(
            timed(lambda a, w, b: fast.layers.linear(a, w, b), (B * S, i), (o, i), (o,))
            for i, o in ((H, 3 * H), (H, H), (H, I), (I, H))),
        "attention core: Q K^T, mask, softmax, dropout, P V (mask drawn inside)": timed(
            lambda t: numpy_ops.self_attention(t, mask, attn_dropout.keep((B, N, S, S)), attn_dropout.p)[0],
            (B, S, 3, N, D)),
        "GELU": timed(ops.gelu, (B, S, I)),
        "LayerNorm (x2)": 2 * timed(lambda t, w, b: ops.layer_norm(t, w, b, 1e-12), (B, S, H), (H,), (H,)),
        "dropout + residual add (x2)": 2 * timed(lambda a, b: b + hidden_dropout(a), (B, S, H), (B, S, H)),
    }
    layer_flops = 6 * B * S * (4 * H * H + 2 * H * I) + 12 * B * S * S * H
    print("| one encoder layer, fwd+bwd, each piece timed alone | ms | share |\n|---|---:|---:|")
    print(f"| whole layer | {1e3 * full:.1f} | 100% |")
    for name, t in pieces.items():
        print(f"| {name} | {1e3 * t:.1f} | {100 * t / full:.0f}% |")
    rest = full - sum(pieces.values())
    print(f"| the rest (dispatch, allocation; pieces overlap less when alone) | {1e3 * rest:.1f} | "
          f"{100 * rest / full:.0f}% |")
    print(f"| (the layer's {layer_flops / 1e9:.1f} GFLOP at {rate:.0f} GFLOP/s would take) | "
          f"{1e3 * layer_flops / rate / 1e9:.1f} | {100 * layer_flops / rate / 1e9 / full:.0f}% |\n")


def profile_ops(flow, cfg, args):
    """View 3: each op of bertlib.fast against OneFlow's built-in at the model's shapes (fwd + bwd)."""
    from bertlib import fast
    from bertlib.fast import numpy_ops, oneflow_ops as ops

    F = flow.nn.functional
    B, S, P = args.batch, _common.SEQ_LEN, _common.MASKED
    H, I, N, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.vocab_size
    D = H // N
    mask = flow.zeros(B, 1, 1, S)
    dropout = fast.Dropout.adopt(flow.nn.Dropout(0.1), "auto")
    builtin = {
        "layer_norm": lambda t, w, b: F.layer_norm(t, (t.shape[-1],), w, b, 1e-12),
        "gelu": F.gelu,
        "linear (with bias)": F.linear,
        "softmax": lambda t: flow.softmax(t, dim=-1),
        "cross_entropy": lambda t, labels: -flow.gather(flow.log_softmax(t, dim=-1), 1, labels.unsqueeze(1)).squeeze(1),
        "dropout": lambda t: F.dropout(t, 0.1, True),
        "attention core": lambda t: attention_with_oneflow_ops(t, mask, F.dropout(flow.ones(B, N, S, S), 0.1, True)),
    }
    ours = {
        "layer_norm": lambda t, w, b: ops.layer_norm(t, w, b, 1e-12),
        "gelu": ops.gelu,
        "linear (with bias)": ops.linear,
        "softmax": ops.softmax,
        "cross_entropy": ops.cross_entropy,
        "dropout": dropout,
        "attention core": lambda t: numpy_ops.self_attention(t, mask, dropout.keep((B, N, S, S)), dropout.p)[0],
    }
    labels = flow.randint(0, V, (B * P,))
    shapes = {
        "layer_norm": ([(B * S, H), (H,), (H,)], None),
        "gelu": ([(B * S, I)], None),
        "linear (with bias)": ([(B * S, H), (I, H), (I,)], None),
        "softmax": ([(B, N, S, S)], None),
        "cross_entropy": ([(B * P, V)], labels),
        "dropout": ([(B, N, S, S)], None),
        "attention core": ([(B, S, 3, N, D)], None),
    }
    print("| op, fwd+bwd at the model's shape | OneFlow built-in (ms) | bertlib.fast (ms) | speed-up |\n"
          "|---|---:|---:|---:|")
    for name, (shp, extra) in shapes.items():
        a = 1e3 * fwd_bwd(flow, builtin[name], shp, args.reps, extra)
        b = 1e3 * fwd_bwd(flow, ours[name], shp, args.reps, extra)
        desc = " x ".join(str(list(s)) for s in shp[:1])
        print(f"| {name} {desc} | {a:.1f} | {b:.1f} | {a / b:.1f}x |")


def attention_with_oneflow_ops(qkv, mask_bias, keep):
    """The attention core as bertlib.fast writes it for nn.Graph / CUDA: heads split by permutes."""
    from bertlib.fast import oneflow_ops

    return oneflow_ops.self_attention(qkv, mask_bias, lambda probs: probs * keep)[0]


def _best_rate(run, n: int, reps: int) -> float:
    """GFLOP/s of ``run()``, an n^3 matmul, over its fastest of ``reps`` runs after a warm-up."""
    run()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def sgemm_gflops(flow, n=2048, reps=3) -> float:
    a, b = flow.randn(n, n), flow.randn(n, n)
    return _best_rate(lambda: flow.matmul(a, b).numpy(), n, reps)


def numpy_sgemm_gflops(n=2048, reps=3) -> float:
    import numpy as np

    a = np.random.rand(n, n).astype(np.float32)
    return _best_rate(lambda: np.matmul(a, a), n, reps)


if __name__ == "__main__":
    main()
