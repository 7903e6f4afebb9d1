#!/usr/bin/env python3
"""BERT pre-training throughput on this machine: bertlib (OneFlow) and Hugging Face (PyTorch), one run.

Same work on both sides: the same BERT config, sequence length 128 (20 masked positions per
example), the same global batch, AdamW (weight decay 0.01 on matrices, eps 1e-6), fp32, dropout
0.1, timed in steady state after warm-up steps on synthetic batches. Runs:

* bertlib in its best configuration for this machine (one process per core, data parallel; eager
  or nn.Graph), or with ``--levers`` the whole matrix of configurations (1 vs 2 processes, eager vs
  graph, bertlib's CPU kernels vs OneFlow's built-in ones) that shows what each lever gives;
* Hugging Face ``transformers`` on PyTorch, threads = cores, in a separate Python 3.11 venv
  (``.bench-venv-ref``, made by bench/setup_reference_env.sh on first use): (a) the same work as
  bertlib (MLM head on the gathered masked positions only) and (b) BertForPreTraining as users call
  it (MLM logits at every position, labels -100 elsewhere);
* the cost as work grows: BERT-base samples/s at sequence lengths 128, 256, 384 and 512 (masked
  positions scaled with the length: 20, 40, 60, 80), bertlib against (a), at a smaller global
  batch (``--sweep-global-batch``, default 16) so that the longest sequences finish in minutes;
* peak RSS per process of BERT-base at batch 8, both frameworks: after one step, and over three
  (from the second step on, the optimizer's moments exist beside a step's activations).

Prints samples/s, tokens/s, model FLOP utilisation (model FLOPs per second over the measured sgemm
limit of the same cores: the largest of OneFlow and NumPy one process per core at once, and
PyTorch threads = cores), peak RSS per process, the ratios bertlib / (a) and bertlib / (b), the
load average before each run, and under each table the command that reproduces each row. Every
configuration runs ``--rounds`` times (default 3), the frameworks interleaved within each round,
and reports the MEDIAN round and the spread (min-max) of the rounds: on a shared VM the speed of
the same work drifts by 10-20% over minutes.

    python bench/pretrain_throughput.py                          # all of the above, ~75-85 min on 2 cores
    python bench/pretrain_throughput.py --sweep-seq-lengths ''   # seq 128 + RSS only, ~35 min
    python bench/pretrain_throughput.py --configs '' --no-memory # the sequence-length sweep only, ~40 min
    python bench/pretrain_throughput.py --configs tiny --steps 5 --sweep-seq-lengths '' # quick look
    python bench/pretrain_throughput.py --levers                 # every lever, one at a time
    python bench/pretrain_throughput.py --memory-only            # peak RSS at batch 8 only, ~3 min
    python bench/pretrain_throughput.py --quick                  # smoke test, ~1 min

Only the standard library is needed here: each measurement runs in a fresh worker process
(bench/_bertlib_worker.py in this venv, bench/_hf_worker.py in the reference venv). bertlib's side
is the product's own training loop, bertlib.trainer.Trainer, as bert-pretrain runs it (without
gradient clipping, which the PyTorch side does not do either).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _common  # noqa: E402
import _driver  # noqa: E402

# Per config: global batch, steps timed, warm-up steps. BERT-base runs ~1.5 examples/s here, so its
# default (2 steps of 64 after 1 warm-up step, three rounds) keeps the seq-128 part near 35 minutes
# on 2 cores. 64 examples per optimizer step (BERT's own recipe uses 256) spread the per-step costs
# (AdamW over 110M parameters, the gradient all-reduce between processes) as real pre-training does.
DEFAULTS = {
    "tiny": dict(global_batch=64, steps=8, warmup=2),
    "base": dict(global_batch=64, steps=2, warmup=1),
}
# bertlib's best configuration on a 2-core CPU (measured with --levers and --bertlib, see
# bench/RESULTS.md): one eager process per core, gradients averaged once per step; BERT-base in
# micro-batches of 16 (~4% faster than 8: fewer, larger matmuls). (mode, processes, micro-batch)
BEST = {
    "tiny": ("eager", 2, 32),
    "base": ("eager", 2, 16),
}
HF_MICRO = {"tiny": 64, "base": 32}   # PyTorch's micro-batch (its whole batch fits for tiny; 32 for base)
RSS_BATCH = 8                          # peak RSS is also reported for BERT-base at this batch size
RSS_STEPS = (1, 3)                     # ... after one step, and over three: a run's steady state
# The sequence-length sweep: tokens per micro-batch are capped (bertlib per process, PyTorch per
# pass) so that seq 512 fits in memory next to the other process; the rest is accumulated.
SWEEP_TOKENS = {"bertlib": 2048, "hf": 4096}


def _micro_for(tokens: int, seq: int, batch: int) -> int:
    """The largest divisor of ``batch`` with at most ``tokens`` tokens (at least 1 example)."""
    cap = max(1, tokens // seq)
    return max(d for d in range(1, batch + 1) if batch % d == 0 and d <= cap)


@dataclasses.dataclass
class Run:
    """One bertlib configuration."""
    label: str
    mode: str = "eager"
    procs: int = 1
    micro: int = 8
    builtin_kernels: bool = False
    mlm_everywhere: bool = False
    env: dict = dataclasses.field(default_factory=dict)


def _amd_avx2() -> bool:
    """True where bertlib.runtime names OpenBLAS's Haswell kernels itself (AMD CPUs with AVX2)."""
    try:
        info = open("/proc/cpuinfo").read(1 << 16)
    except OSError:
        return False
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    return ("AuthenticAMD" in info or "HygonGenuine" in info) and "avx2" in flags and "fma" in flags


def lever_runs(config: str, cores: int) -> list:
    """Each lever on its own, from the naive port to the best configuration, and two costs."""
    mode, procs, micro = BEST[config]
    one = micro * procs   # the same work per pass for one process
    runs = []
    if _amd_avx2():
        runs.append(Run("naive port: 1 proc, OneFlow's kernels, OpenBLAS SSE3 kernels (its own pick here)",
                        procs=1, micro=one, builtin_kernels=True, env={"OPENBLAS_CORETYPE": "Prescott"}))
    runs += [
        Run("+ OpenBLAS AVX2 kernels (OPENBLAS_CORETYPE=Haswell)", procs=1, micro=one, builtin_kernels=True),
        Run("+ bertlib CPU kernels", procs=1, micro=one),
        Run(f"+ {cores} processes (one per core)", procs=cores, micro=micro),
        Run("same, OneFlow's kernels", procs=cores, micro=micro, builtin_kernels=True),
        Run("same, nn.Graph instead of eager", mode="graph", procs=cores, micro=micro),
        Run("same, MLM logits at all 128 positions", procs=cores, micro=micro, mlm_everywhere=True),
        Run("same, ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD=1", procs=cores, micro=micro,
            env={"ONEFLOW_VM_COMPUTE_ON_WORKER_THREAD": "1"}),
    ]
    if micro != RSS_BATCH:
        runs.append(Run(f"same, micro-batch {RSS_BATCH}", procs=cores, micro=RSS_BATCH))
    return runs


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,base", help="comma-separated: tiny, base ('' for none)")
    ap.add_argument("--seq-len", type=int, default=_common.SEQ_LEN,
                    help="tokens per example of the --configs runs (masked positions scale with it)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default per config)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default per config)")
    ap.add_argument("--global-batch", type=int, default=None, help="examples per optimizer step")
    ap.add_argument("--frameworks", default="bertlib,hf", help="comma-separated: bertlib, hf")
    ap.add_argument("--levers", action="store_true",
                    help="run every bertlib configuration (processes, eager/graph, kernels), not just the best")
    ap.add_argument("--bertlib", action="append", default=None, metavar="MODE:PROCS:MICRO",
                    help="explicit bertlib run(s), e.g. eager:2:16 or graph:1:8 (repeatable)")
    ap.add_argument("--hf-variants", default="gathered,full", help="HF runs: gathered (a), full (b); '' for none")
    ap.add_argument("--hf-micro-batch", type=int, default=None)
    ap.add_argument("--threads", default=str(os.cpu_count()),
                    help="PyTorch threads per HF run (default: cores); a comma-separated list runs each, "
                         "e.g. 2,1 (on a loaded machine one thread can beat two)")
    ap.add_argument("--sweep-seq-lengths", default="128,256,384,512",
                    help="BERT-base samples/s at each of these sequence lengths, bertlib vs HF (a) "
                         "('' to skip)")
    ap.add_argument("--sweep-config", default="base", help="the model of the sequence-length sweep")
    ap.add_argument("--sweep-global-batch", type=int, default=16, help="global batch of the sweep")
    ap.add_argument("--sweep-steps", type=int, default=2, help="timed steps per sweep run")
    ap.add_argument("--sweep-warmup", type=int, default=1, help="warm-up steps per sweep run")
    ap.add_argument("--ref-python", default=_driver.DEFAULT_REF_PYTHON,
                    help="interpreter with torch + transformers (default: $BENCH_REF_PYTHON, else .bench-venv-ref, "
                         "created by setup_reference_env.sh if missing)")
    ap.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    ap.add_argument("--markdown", default=None, help="also write the result tables (markdown) here")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per run")
    ap.add_argument("--quiet-load", type=float, default=None, metavar="L",
                    help="before each run wait (up to --quiet-wait s) until the 1-minute load average is below L: "
                         "on a shared machine, other jobs slow both frameworks, and PyTorch's threads more")
    ap.add_argument("--quiet-wait", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3,
                    help="run every configuration this many times, frameworks interleaved within each round; "
                         "each reports its median round and the spread")
    ap.add_argument("--no-memory", action="store_true", help="skip the BERT-base batch-8 peak-RSS runs")
    ap.add_argument("--memory-only", action="store_true", help="only the BERT-base batch-8 peak-RSS runs")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny model, seq 64, global batch 4, 1 warm-up + 1 timed step, HF (a) only, "
                         "sweep over seq 64 and 128 on tiny, 1 round, no memory runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.configs, args.seq_len, args.global_batch, args.steps, args.warmup = "tiny", 64, 4, 1, 1
        args.hf_variants, args.no_memory, args.sweep_config = "gathered", True, "tiny"
        args.sweep_global_batch, args.sweep_steps, args.sweep_warmup = 4, 1, 1
        if args.sweep_seq_lengths == ap.get_default("sweep_seq_lengths"):
            args.sweep_seq_lengths = "64,128"
        if args.rounds == ap.get_default("rounds"):
            args.rounds = 1
    return args


@dataclasses.dataclass
class Job:
    """One measurement, run once per round: a bertlib Run or an HF variant, at one config and length."""
    section: str          # "main" (--configs) or "sweep"
    config: str
    seq: int
    kind: str             # bertlib | hf
    what: object          # Run, or (variant, micro-batch, threads)
    gb: int
    steps: int
    warmup: int
    repro: str = ""


# ------------------------------------------------------------------------------------------ runs
def run_bertlib(config, run: Run, gb, steps, warmup, timeout, seq=_common.SEQ_LEN):
    out_dir = tempfile.mkdtemp(prefix="bertlib-bench-")
    worker = os.path.join(HERE, "_bertlib_worker.py")
    procs, micro = run.procs, min(run.micro, gb // run.procs)
    args = ["--config", config, "--seq-len", str(seq), "--mode", run.mode, "--global-batch", str(gb),
            "--micro-batch", str(micro), "--steps", str(steps), "--warmup", str(warmup), "--out", out_dir]
    if run.builtin_kernels:
        args.append("--builtin-kernels")
    if run.mlm_everywhere:
        args.append("--mlm-everywhere")
    code, tail = _driver.run(_driver.bertlib_command(worker, args, procs), timeout, _driver.bertlib_env(**run.env))
    try:
        ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(procs)]
    except FileNotFoundError:
        ranks = None
    shutil.rmtree(out_dir, ignore_errors=True)
    if code != 0 or ranks is None:
        return dict(framework="bertlib", config=config, seq_len=seq, label=run.label, error=tail)
    result = dict(ranks[0], label=run.label)
    result["peak_rss_mb"] = [r["peak_rss_mb"] for r in ranks]
    # every rank steps together (gradients are averaged each step): the slowest rank sets the pace
    result["step_s_median"] = max(r["step_s_median"] for r in ranks)
    result["cpu_s_median"] = [statistics.median(r["cpu_s"]) for r in ranks]
    result["sys_s_median"] = [statistics.median(r["sys_s"]) for r in ranks]
    return result


def run_hf(ref_python, config, variant, gb, micro, threads, steps, warmup, timeout, seq=_common.SEQ_LEN):
    out_dir = tempfile.mkdtemp(prefix="hf-bench-")
    cmd = [ref_python, os.path.join(HERE, "_hf_worker.py"), "--config", config, "--variant", variant,
           "--seq-len", str(seq), "--global-batch", str(gb), "--micro-batch", str(micro), "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup), "--out", out_dir]
    code, tail = _driver.run(cmd, timeout, _driver.ref_env(threads))
    path = os.path.join(out_dir, f"hf-{variant}.json")
    result = json.load(open(path)) if os.path.exists(path) else None
    shutil.rmtree(out_dir, ignore_errors=True)
    if code != 0 or result is None:
        return dict(framework="hf", config=config, seq_len=seq, variant=variant, error=tail)
    result["peak_rss_mb"] = [result["peak_rss_mb"]]
    result["cpu_s_median"] = [statistics.median(result["cpu_s"])]
    return result


# ---------------------------------------------------------------------------------------- report
def _label(r):
    if r["framework"] == "hf":
        name = {"gathered": "HF/PyTorch (a) same work", "full": "HF/PyTorch (b) as users call it"}[r["variant"]]
        if r.get("threads", 0) == os.cpu_count() or "threads" not in r:
            return name
        return f"{name}, {r['threads']} thread(s)"
    return f"bertlib: {r['label']}"


def summarise(results, peak_gflops):
    """Add samples/s (the median round), tokens/s, MFU to each successful result."""
    for r in results:
        if "error" in r:
            continue
        cfg = _common.CONFIGS[r["config"]]
        seq = r.get("seq_len", _common.SEQ_LEN)
        r["samples_per_s"] = r["rate_median"]
        r["tokens_per_s"] = r["samples_per_s"] * seq
        r["model_tflops"] = r["samples_per_s"] * _common.flops_per_sample(cfg, seq_len=seq) / 1e12
        if peak_gflops:
            r["mfu"] = r["model_tflops"] * 1e3 / peak_gflops


def _commands(rows) -> list[str]:
    return ["", "Reproduce each row (it and nothing else, same rounds):", ""] + [
        f"{i}. `{r['repro']}`" for i, r in enumerate(rows, 1)]


def table(results, config, best_key) -> list[str]:
    rows = [r for r in results if r["config"] == config and r["section"] == "main"]
    # the reference of each ratio is PyTorch's fastest run of that variant (threads = cores by default)
    a = max((r for r in rows if r.get("variant") == "gathered" and "error" not in r),
            key=lambda r: r["samples_per_s"], default=None)
    b = max((r for r in rows if r.get("variant") == "full" and "error" not in r),
            key=lambda r: r["samples_per_s"], default=None)
    lines = ["| # | run | procs x threads | micro-batch x accum. | samples/s (median) | spread (min-max) | each round "
             "| tokens/s | MFU | CPU s / step / proc | peak RSS / proc (MiB) | vs (a) | vs (b) | load before |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows, 1):
        if "error" in r:
            lines.append(f"| {i} | {_label(r)} | failed: {_driver.failure_line(r)} ||||||||||||")
            continue
        ra = f"{r['samples_per_s'] / a['samples_per_s']:.2f}x" if a else "-"
        rb = f"{r['samples_per_s'] / b['samples_per_s']:.2f}x" if b else "-"
        mark = " **(best)**" if r["job"] == best_key.get(config) else ""
        rss = " / ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
        cpu = " / ".join(f"{c:.1f}" for c in r.get("cpu_s_median", []))
        mfu = f"{100 * r['mfu']:.0f}%" if "mfu" in r else "-"
        lines.append(f"| {i} | {_label(r)}{mark} | {r['processes']} x {r['threads']} | {r['micro_batch']} x "
                     f"{r['accumulation']} | {r['samples_per_s']:.2f} | {_driver.spread(r)} | "
                     f"{', '.join(f'{v:.2f}' for v in r['rounds'])} | {r['tokens_per_s']:.0f} | {mfu} | "
                     f"{cpu} | {rss} | {ra} | {rb} | {r.get('load_before', float('nan')):.1f} |")
    return lines + _commands(rows)


def sweep_table(results, config) -> list[str]:
    rows = [r for r in results if r["section"] == "sweep"]
    ok = [r for r in rows if "error" not in r]
    shortest = {}
    for r in ok:
        key = r["framework"]
        if key not in shortest or r["seq_len"] < shortest[key]["seq_len"]:
            shortest[key] = r
    lines = ["| # | seq | run | procs x threads | micro-batch x accum. | samples/s (median) | spread (min-max) "
             "| tokens/s | GFLOP / example | MFU | time / example vs shortest | peak RSS / proc (MiB) "
             "| bertlib / PyTorch | load before |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows, 1):
        if "error" in r:
            lines.append(f"| {i} | {r['seq_len']} | {_label(r)} | failed: {_driver.failure_line(r)} ||||||||||||")
            continue
        ref = next((h for h in ok if h["framework"] == "hf" and h["seq_len"] == r["seq_len"]), None)
        ratio = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref and r["framework"] == "bertlib" else "-"
        first = shortest[r["framework"]]
        growth = first["samples_per_s"] / r["samples_per_s"]
        gflop = _common.flops_per_sample(_common.CONFIGS[config], seq_len=r["seq_len"]) / 1e9
        mfu = f"{100 * r['mfu']:.0f}%" if "mfu" in r else "-"
        rss = " / ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
        lines.append(f"| {i} | {r['seq_len']} | {_label(r)} | {r['processes']} x {r['threads']} | "
                     f"{r['micro_batch']} x {r['accumulation']} | {r['samples_per_s']:.3f} | {_driver.spread(r)} | "
                     f"{r['tokens_per_s']:.0f} | {gflop:.1f} | {mfu} | {growth:.2f}x (seq {first['seq_len']}: 1x) | "
                     f"{rss} | {ratio} | {r.get('load_before', float('nan')):.1f} |")
    return lines + _commands(rows)


def _repro(args, job: Job) -> str:
    """The command that runs this job alone (same settings, same rounds)."""
    cmd = ["python", "bench/pretrain_throughput.py", "--configs", job.config, "--seq-len", str(job.seq),
           "--global-batch", str(job.gb), "--steps", str(job.steps), "--warmup", str(job.warmup),
           "--sweep-seq-lengths", "", "--no-memory", "--rounds", str(args.rounds)]
    if job.kind == "bertlib":
        run = job.what
        if run.builtin_kernels or run.mlm_everywhere or run.env:
            cmd += ["--frameworks", "bertlib", "--levers"]     # the lever matrix (this row is one of them)
        else:
            cmd += ["--frameworks", "bertlib", "--bertlib", f"{run.mode}:{run.procs}:{run.micro}"]
    else:
        v, micro, threads = job.what
        cmd += ["--frameworks", "hf", "--hf-variants", v, "--hf-micro-batch", str(micro), "--threads", str(threads)]
    if args.ref_python != _driver.DEFAULT_REF_PYTHON and job.kind == "hf":
        cmd += ["--ref-python", args.ref_python]
    return _driver.shell(cmd)


def build_jobs(args, configs, variants, frameworks, cores) -> list[Job]:
    jobs = []
    for config in configs:
        d = DEFAULTS[config]
        gb = args.global_batch or d["global_batch"]
        steps, warmup = args.steps or d["steps"], args.warmup if args.warmup is not None else d["warmup"]
        if "bertlib" in frameworks:
            if args.bertlib:
                runs = []
                for spec in args.bertlib:
                    mode, procs, micro = spec.split(":")
                    runs.append(Run(f"{mode}, {procs} proc(s), micro-batch {micro}", mode=mode, procs=int(procs),
                                    micro=int(micro)))
            elif args.levers:
                runs = lever_runs(config, cores)
            else:
                mode, procs, micro = BEST[config]
                runs = [Run(f"{mode}, {procs} process{'es' if procs > 1 else ''} (best configuration)",
                            mode=mode, procs=procs, micro=micro)]
            jobs += [Job("main", config, args.seq_len, "bertlib", run, gb, steps, warmup) for run in runs]
        if "hf" in frameworks:
            for v in variants:
                micro = min(args.hf_micro_batch or HF_MICRO[config], gb)
                jobs += [Job("main", config, args.seq_len, "hf", (v, micro, int(t)), gb, steps, warmup)
                         for t in str(args.threads).split(",")]
    seqs = [int(x) for x in args.sweep_seq_lengths.split(",") if x.strip()]
    gb = args.sweep_global_batch
    mode, procs, _ = BEST[args.sweep_config]
    for seq in seqs:
        if "bertlib" in frameworks:
            micro = _micro_for(SWEEP_TOKENS["bertlib"], seq, gb // procs)
            jobs.append(Job("sweep", args.sweep_config, seq, "bertlib",
                            Run(f"{mode}, {procs} processes", mode=mode, procs=procs, micro=micro),
                            gb, args.sweep_steps, args.sweep_warmup))
        if "hf" in frameworks:
            micro = _micro_for(SWEEP_TOKENS["hf"], seq, gb)
            jobs.append(Job("sweep", args.sweep_config, seq, "hf", ("gathered", micro, cores), gb,
                            args.sweep_steps, args.sweep_warmup))
    for job in jobs:
        job.repro = _repro(args, job)
    return jobs


def main(argv=None):
    args = parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs + [args.sweep_config]:
        if c not in DEFAULTS:
            raise SystemExit(f"unknown config {c!r}; choose from {sorted(DEFAULTS)}")
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    variants = [v.strip() for v in args.hf_variants.split(",") if v.strip()]
    if "hf" not in frameworks:
        variants = []
    sweep = [int(x) for x in args.sweep_seq_lengths.split(",") if x.strip()]
    with_torch = bool(variants) or ("hf" in frameworks and bool(sweep))
    cores = os.cpu_count()
    started, load0, sgemm, n, reps = _driver.start_run("bertlib pre-training throughput", args, with_torch)
    jobs = [] if args.memory_only else build_jobs(args, configs, variants, frameworks, cores)
    # Rounds interleave the frameworks: a shared machine drifts by 10-20% over minutes, and each
    # configuration reports its median round, so drift cannot favour whichever framework ran first.
    results = []
    for rnd in range(1, args.rounds + 1):
        for index, job in enumerate(jobs):
            where = f"[{job.config}, seq {job.seq}] round {rnd}/{args.rounds}:"
            if job.kind == "bertlib":
                print(f"{where} bertlib {job.what.label} ...", flush=True)
                load = _driver.wait_for_quiet(args.quiet_load, args.quiet_wait)
                r = run_bertlib(job.config, job.what, job.gb, job.steps, job.warmup, args.timeout, job.seq)
            else:
                v, micro, threads = job.what
                print(f"{where} HF {v} micro-batch {micro}, {threads} threads ...", flush=True)
                load = _driver.wait_for_quiet(args.quiet_load, args.quiet_wait)
                r = run_hf(args.ref_python, job.config, v, job.gb, micro, threads, job.steps, job.warmup,
                           args.timeout, job.seq)
            r.update(load_before=load, job=index, round=rnd, section=job.section, repro=job.repro)
            _progress(r)
            results.append(r)
    results = _driver.median_rounds(results, lambda r: r["global_batch"] / r["step_s_median"])
    # peak RSS of BERT-base at batch 8 per process, for both frameworks: one short run each
    memory = []
    if ("base" in configs and not args.no_memory) or args.memory_only:
        mode, procs, _ = BEST["base"]
        for steps in RSS_STEPS:
            if "bertlib" in frameworks:
                print(f"[base] bertlib {mode}, {procs} processes at batch {RSS_BATCH}, {steps} step(s), "
                      "for its peak RSS ...", flush=True)
                r = run_bertlib("base", Run(f"{mode}, {procs} processes", mode=mode, procs=procs, micro=RSS_BATCH),
                                RSS_BATCH * procs, steps, 0, args.timeout, args.seq_len)
                memory.append(dict(r, rss_steps=steps))
            for v in variants:
                print(f"[base] HF {v} at batch {RSS_BATCH}, {steps} step(s), for its peak RSS ...", flush=True)
                r = run_hf(args.ref_python, "base", v, RSS_BATCH, RSS_BATCH, cores, steps, 0, args.timeout,
                           args.seq_len)
                memory.append(dict(r, rss_steps=steps))
    peak = max(sgemm.values()) if sgemm else None
    summarise(results, peak)
    best_key = {}
    for config in configs:
        ok = [r for r in results if r["config"] == config and r["section"] == "main"
              and r["framework"] == "bertlib" and "error" not in r]
        if ok:
            best_key[config] = max(ok, key=lambda r: r["samples_per_s"])["job"]
    flags = _driver.shell(argv if argv is not None else sys.argv[1:])
    out = [f"Command: `python bench/pretrain_throughput.py {flags}`".rstrip(),
           f"Machine: {platform.node()}, {cores} cores ({_driver.cpu_model()}), {_driver.mem_gb():.0f} GB RAM; "
           f"date {started:%Y-%m-%d %H:%M}; load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}",
           _driver.sgemm_line(sgemm, cores, n, reps),
           f"Settings: AdamW (wd 0.01, eps 1e-6), fp32, dropout 0.1; masked positions 20 at seq 128, scaled with "
           f"the length; {args.rounds} round(s), frameworks interleaved in each, the median round reported "
           "with the spread of all rounds. MFU counts the model FLOPs of the same work for every row "
           "(6 x weights x tokens, MLM head at the masked positions, + attention). "
           "CPU s / step / proc below wall-clock s / step x threads means the cores were shared.", ""]
    for config in ([] if args.memory_only else configs):
        cfg = _common.CONFIGS[config]
        gb = args.global_batch or DEFAULTS[config]["global_batch"]
        out.append(f"### {config}: {cfg['num_hidden_layers']} layers / {cfg['hidden_size']} hidden / "
                   f"{cfg['num_attention_heads']} heads, seq {args.seq_len}, global batch {gb}, "
                   f"{_common.flops_per_sample(cfg, seq_len=args.seq_len) / 1e9:.2f} GFLOP per example")
        out.append("")
        out.extend(table(results, config, best_key))
        out.append("")
    if sweep and not args.memory_only:
        cfg = _common.CONFIGS[args.sweep_config]
        out += [f"### cost as work grows: {args.sweep_config} ({cfg['num_hidden_layers']} layers / "
                f"{cfg['hidden_size']} hidden), samples/s against sequence length, global batch "
                f"{args.sweep_global_batch}, {args.sweep_steps} timed step(s) after {args.sweep_warmup} warm-up", ""]
        out.extend(sweep_table(results, args.sweep_config))
        out.append("")
    if memory:
        out += [f"### peak RSS per process, BERT-base, seq {args.seq_len}, batch {RSS_BATCH} per process", "",
                "| run | " + " | ".join(f"peak RSS / process (MiB), {n} step(s)" for n in RSS_STEPS) + " |",
                "|---|" + "---:|" * len(RSS_STEPS)]
        for label in dict.fromkeys(_label(r) for r in memory):
            cells = []
            for n in RSS_STEPS:
                r = next(r for r in memory if _label(r) == label and r["rss_steps"] == n)
                cells.append(" / ".join(f"{m:.0f}" for m in r["peak_rss_mb"]) if "error" not in r
                             else f"failed: {_driver.failure_line(r)}")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out += ["", "Reproduce: `python bench/pretrain_throughput.py --memory-only"
                + (f" --seq-len {args.seq_len}" if args.seq_len != _common.SEQ_LEN else "") + "`", ""]
    text = "\n".join(out)
    print("\n" + text, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(started=started.isoformat(), sgemm_gflops=sgemm, results=results, memory=memory), f,
                      indent=1)
    return 0 if all("error" not in r for r in results + memory) else 1


def _progress(r):
    if "error" in r:
        print(f"    FAILED:\n{r['error']}", flush=True)
    else:
        gb = r["global_batch"]
        cpu = " / ".join(f"{c:.1f}" for c in r.get("cpu_s_median", []))
        print(f"    {gb / r['step_s_median']:.2f} samples/s (median step {r['step_s_median']:.2f} s, CPU {cpu} s, "
              f"warm-up {r['warmup_s']:.1f} s), peak RSS {' / '.join(f'{m:.0f}' for m in r['peak_rss_mb'])} MiB, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
