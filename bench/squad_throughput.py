#!/usr/bin/env python3
"""SQuAD throughput on this machine: bertlib (OneFlow) and Hugging Face (PyTorch), one run.

Synthetic SQuAD windows (bench/_common.py: ``[CLS] question [SEP] context [SEP]`` + padding, random
token ids and answer spans), the same on both sides, at each ``--seq-lengths`` (default 256 and
384), each holding as many tokens as a window of SQuAD v1.1's dev set drawn at random (at seq 384:
178 on average, 2.4% full; bench/squad_window_lengths.json), for:

* prediction, windows/s (forward only, eval mode, no grad), MiniLM-L6 dims (6 layers, hidden 384,
  12 heads, intermediate 1536) and with ``--predict-configs minilm,base`` BERT-base too:
  bertlib = ``bertlib.tasks.squad.predict_raw_results``, the prediction loop of ``bert-squad
  --do_eval`` (eval OFRecords -> windows sorted by length, each batch cut to its longest ->
  BertForQuestionAnswering -> logits), in one process per core of 1 thread each, every process
  predicting its share (the sum of their windows/s); PyTorch = transformers'
  ``BertForQuestionAnswering``, threads = cores, twice: every window padded to the sequence length
  (transformers' run_qa.py's default) and with bertlib's batching (``hf-trimmed``); batch
  ``--predict-batch`` (64) per process on both sides;
* fine-tuning, windows/s, MiniLM-L6 and BERT-base dims: bertlib = bertlib.trainer.Trainer with
  bertlib.tasks.squad.squad_step_loss as ``bert-squad --do_train`` runs it (eager, AdamW lr 3e-5,
  weight decay 0.01, gradient clipping at 1.0, dropout 0.1), one process per core; PyTorch =
  BertForQuestionAnswering + fused torch AdamW, the same clipping, threads = cores; the same
  global batch (``--train-batch``, 32), in micro-batches small enough for memory (table below).

Prints, per row: windows/s (the median round) and the spread (min-max) of the rounds, model FLOP
utilisation against the sgemm limit of the CPU (the largest of OneFlow and NumPy one process per
core at once and PyTorch threads = cores, measured first), peak RSS per process, the ratio
bertlib / PyTorch, the load average before the run, and under each table the command that
reproduces each row. Every configuration runs ``--rounds`` times (default 3), the frameworks
interleaved within each round: on a shared VM the speed of the same work drifts by 10-20% over
minutes.

    python bench/squad_throughput.py                                 # ~50 min on 2 cores
    python bench/squad_throughput.py --configs minilm                # MiniLM only, ~15 min
    python bench/squad_throughput.py --predict-configs minilm,base   # + BERT-base prediction, ~+30 min
    python bench/squad_throughput.py --tasks predict --seq-lengths 384 --rounds 1   # a quick look
    python bench/squad_throughput.py --quick                         # smoke test, ~1-2 min

Only the standard library is needed here: each measurement runs in a fresh worker process
(bench/_squad_worker.py in this venv, ``-m oneflow.distributed.launch`` for the processes;
bench/_hf_squad_worker.py in the reference venv ``.bench-venv-ref``, made by
bench/setup_reference_env.sh on first use).
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
sys.path.insert(0, HERE)

import _common  # noqa: E402
import _driver  # noqa: E402

# Timed steps (prediction: batches per process; fine-tuning: optimizer steps) and warm-up steps.
DEFAULT_STEPS = {("predict", "minilm"): (4, 1), ("predict", "base"): (2, 1),
                 ("train", "minilm"): (3, 1), ("train", "base"): (2, 1), }
# Fine-tuning micro-batches are capped in tokens so that two bertlib processes (or PyTorch's one)
# fit in memory at seq 384 next to the rest of the machine; the rest of the batch is accumulated.
TRAIN_TOKENS = {"minilm": {"bertlib": 8192, "hf": 16384}, "base": {"bertlib": 2048, "hf": 4096},
                "tiny": {"bertlib": 8192, "hf": 16384}}
FRAMEWORKS = ("bertlib", "hf", "hf-trimmed")
LENGTH_NOTES = {"squad-dev": "as many tokens as SQuAD v1.1 dev's windows: bench/squad_window_lengths.json",
                "half-padded": "half of them full, half between half and all of the sequence length"}
TASK_NAMES = {"predict": "prediction (forward only, eval mode, no grad)",
              "train": "fine-tuning (forward + backward + AdamW step)"}


def _micro_for(tokens: int, seq: int, batch: int) -> int:
    """The largest divisor of ``batch`` with at most ``tokens`` tokens (at least 1 example)."""
    cap = max(1, tokens // seq)
    return max(d for d in range(1, batch + 1) if batch % d == 0 and d <= cap)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="minilm,base", help="model sizes, comma-separated: minilm, base, tiny")
    ap.add_argument("--predict-configs", default="minilm",
                    help="of --configs, the sizes whose prediction is measured (BERT-base's adds ~30 min)")
    ap.add_argument("--tasks", default="predict,train", help="comma-separated: predict, train")
    ap.add_argument("--seq-lengths", default="256,384", help="tokens per window, comma-separated")
    ap.add_argument("--frameworks", default="bertlib,hf,hf-trimmed",
                    help="comma-separated: bertlib, hf (windows padded to the sequence length, as transformers' "
                         "run_qa.py by default), hf-trimmed (prediction only: PyTorch with bertlib's batching, "
                         "windows sorted by length and each batch cut to its longest)")
    ap.add_argument("--lengths", default="squad-dev", choices=_common.WINDOW_LENGTHS,
                    help="tokens per synthetic window: drawn from SQuAD v1.1 dev's windows at each sequence length "
                         "(bench/squad_window_lengths.json), or half-padded (half full, half between S/2 and S)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="run every configuration this many times, frameworks interleaved within each round; "
                         "each reports its median round and the spread")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default per task and size)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    ap.add_argument("--predict-batch", type=int, default=64, help="prediction batch per process (bert-squad's: 64)")
    ap.add_argument("--train-batch", type=int, default=32, help="fine-tuning global batch")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="fine-tuning micro-batch, per bertlib process and per PyTorch pass (default: capped in "
                         "tokens per size)")
    ap.add_argument("--procs", type=int, default=os.cpu_count(), help="bertlib processes (default: cores)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads (default: cores)")
    ap.add_argument("--ref-python", default=_driver.DEFAULT_REF_PYTHON,
                    help="interpreter with torch + transformers (default: $BENCH_REF_PYTHON, else .bench-venv-ref, "
                         "created by setup_reference_env.sh if missing)")
    ap.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    ap.add_argument("--markdown", default=None, help="also write the result tables (markdown) here")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds allowed per run")
    ap.add_argument("--quiet-load", type=float, default=None, metavar="L",
                    help="before each run wait (up to --quiet-wait s) until the 1-minute load average is below L")
    ap.add_argument("--quiet-wait", type=int, default=600)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: MiniLM dims, seq 128, batch 4, 1 warm-up + 1 timed step, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.configs = args.predict_configs = "minilm"
        args.seq_lengths, args.predict_batch, args.train_batch = "128", 4, 4
        args.steps, args.warmup = 1, 1
        if args.rounds == ap.get_default("rounds"):
            args.rounds = 1
    return args


@dataclasses.dataclass
class Job:
    task: str
    config: str
    seq: int
    framework: str
    batch: int          # predict: per process; train: global
    micro: int | None
    steps: int
    warmup: int
    repro: str = ""


def build_jobs(args) -> list[Job]:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    predict_configs = {c.strip() for c in args.predict_configs.split(",") if c.strip()}
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seqs = [int(s) for s in args.seq_lengths.split(",") if s.strip()]
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    for c in configs:
        if c not in _common.CONFIGS:
            raise SystemExit(f"unknown config {c!r}; choose from {sorted(_common.CONFIGS)}")
    for fw in frameworks:
        if fw not in FRAMEWORKS:
            raise SystemExit(f"unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}")
    jobs = []
    for task in tasks:
        if task not in TASK_NAMES:
            raise SystemExit(f"unknown task {task!r}; choose from predict, train")
        for config in configs:
            if task == "predict" and config not in predict_configs:
                continue
            steps, warmup = DEFAULT_STEPS.get((task, config), (2, 1))
            steps = args.steps or steps
            warmup = args.warmup if args.warmup is not None else warmup
            for seq in seqs:
                for fw in frameworks:
                    if fw == "hf-trimmed" and task != "predict":
                        continue
                    if task == "predict":
                        batch, micro = args.predict_batch, None
                    else:
                        batch = args.train_batch
                        per_pass = batch // args.procs if fw == "bertlib" else batch
                        micro = args.micro_batch or _micro_for(TRAIN_TOKENS[config][fw], seq, per_pass)
                    jobs.append(Job(task, config, seq, fw, batch, micro, steps, warmup))
    for job in jobs:
        cmd = ["python", "bench/squad_throughput.py", "--tasks", job.task, "--configs", job.config,
               "--predict-configs", job.config, "--seq-lengths", str(job.seq), "--frameworks", job.framework,
               "--rounds", str(args.rounds), "--steps", str(job.steps), "--warmup", str(job.warmup),
               "--lengths", args.lengths]
        if job.task == "predict":
            cmd += ["--predict-batch", str(job.batch)]
        else:
            cmd += ["--train-batch", str(job.batch), "--micro-batch", str(job.micro)]
        cmd += ["--procs", str(args.procs)] if job.framework == "bertlib" else ["--threads", str(args.threads)]
        if job.framework != "bertlib" and args.ref_python != _driver.DEFAULT_REF_PYTHON:
            cmd += ["--ref-python", args.ref_python]
        job.repro = _driver.shell(cmd)
    return jobs


# ------------------------------------------------------------------------------------------ runs
def run_job(args, job: Job) -> dict:
    out_dir = tempfile.mkdtemp(prefix="squad-bench-")
    common = ["--config", job.config, "--task", job.task, "--seq-len", str(job.seq), "--batch", str(job.batch),
              "--steps", str(job.steps), "--warmup", str(job.warmup), "--out", out_dir, "--lengths", args.lengths]
    if job.micro:
        common += ["--micro-batch", str(job.micro)]
    base = dict(framework=job.framework, task=job.task, config=job.config, seq_len=job.seq)
    try:
        if job.framework == "bertlib":
            procs = args.procs
            cmd = _driver.bertlib_command(os.path.join(HERE, "_squad_worker.py"), common, procs)
            code, tail = _driver.run(cmd, args.timeout, _driver.bertlib_env())
            try:
                ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(procs)]
            except FileNotFoundError:
                return dict(base, error=tail or f"exit code {code}")
            if code != 0:
                return dict(base, error=tail)
            result = dict(ranks[0])
            result["peak_rss_mb"] = [r["peak_rss_mb"] for r in ranks]
            result["cpu_s_median"] = [statistics.median(r["cpu_s"]) for r in ranks]
            if job.task == "predict":   # every process predicts its own share: their rates add up
                result["windows_per_s"] = sum(r["windows_per_s"] for r in ranks)
                result["windows_per_s_each"] = [r["windows_per_s"] for r in ranks]
                # the same from the wall clock: every timed window over the span from the first
                # process's start to the last one's end (equal to the sum when they overlap fully)
                span = max(r["timed_to"] for r in ranks) - min(r["timed_from"] for r in ranks)
                result["windows_per_s_wall"] = sum(r["timed_windows"] for r in ranks) / span
            else:                       # ranks step together: the slowest sets the pace
                result["step_s_median"] = max(r["step_s_median"] for r in ranks)
                result["windows_per_s"] = job.batch / result["step_s_median"]
            return result
        cmd = [args.ref_python, os.path.join(HERE, "_hf_squad_worker.py"), *common, "--threads", str(args.threads)]
        if job.framework == "hf-trimmed":
            cmd.append("--trim")
        code, tail = _driver.run(cmd, args.timeout, _driver.ref_env(args.threads))
        path = os.path.join(out_dir, "hf.json")
        if code != 0 or not os.path.exists(path):
            return dict(base, error=tail or f"exit code {code}")
        result = json.load(open(path))
        result["framework"] = job.framework
        result["peak_rss_mb"] = [result["peak_rss_mb"]]
        result["cpu_s_median"] = [statistics.median(result["cpu_s"])]
        if job.task == "train":
            result["windows_per_s"] = job.batch / result["step_s_median"]
        return result
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- report
def _label(r) -> str:
    if r["framework"] == "hf":
        return "HF/PyTorch BertForQuestionAnswering" + (", padded" if r["task"] == "predict" else "")
    if r["framework"] == "hf-trimmed":
        return "HF/PyTorch BertForQuestionAnswering, bertlib's batching"
    return "bertlib: " + ("bertlib.tasks.squad.predict_raw_results" if r["task"] == "predict"
                          else "Trainer + squad_step_loss")


def table(results, task, peak) -> list[str]:
    rows = [r for r in results if r["task"] == task]
    lines = ["| # | model | seq | run | procs x threads | batch: micro x accum. | windows/s (median) "
             "| spread (min-max) | each round | MFU | CPU s / step / proc | peak RSS / proc (MiB) "
             "| bertlib / PyTorch | bertlib / PyTorch with bertlib's batching | load before |",
             "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows, 1):
        head = f"| {i} | {r['config']} | {r['seq_len']} | {_label(r)} |"
        if "error" in r:
            lines.append(f"{head} failed: {_driver.failure_line(r)} |||||||||||")
            continue

        def ratio(framework):
            ref = next((h for h in rows if h["framework"] == framework and "error" not in h
                        and h["config"] == r["config"] and h["seq_len"] == r["seq_len"]), None)
            return f"{r['rate_median'] / ref['rate_median']:.2f}x" if ref and r["framework"] == "bertlib" else "-"

        if "flops" in r:    # prediction: the work as computed (padded, or cut per batch)
            flops = r["flops"] / r["timed_windows"]
        else:
            flops = _common.squad_forward_flops(_common.CONFIGS[r["config"]], r["seq_len"]) * 3
        mfu = f"{100 * r['rate_median'] * flops / 1e9 / peak:.0f}%" if peak else "-"
        per = r["batch"] if task == "train" else f"{r['batch']} / proc"
        lines.append(f"{head} {r['processes']} x {r['threads']} | {per}: {r['micro_batch']} x {r['accumulation']} | "
                     f"{r['rate_median']:.2f} | {_driver.spread(r)} | {', '.join(f'{v:.2f}' for v in r['rounds'])} | "
                     f"{mfu} | {' / '.join(f'{c:.1f}' for c in r['cpu_s_median'])} | "
                     f"{' / '.join(f'{m:.0f}' for m in r['peak_rss_mb'])} | {ratio('hf')} | {ratio('hf-trimmed')} | "
                     f"{r.get('load_before', float('nan')):.1f} |")
    return lines + ["", "Reproduce each row (it and nothing else, same rounds):", ""] + [
        f"{i}. `{r['repro']}`" for i, r in enumerate(rows, 1)]


def main(argv=None):
    args = parse_args(argv)
    jobs = build_jobs(args)
    with_torch = any(j.framework == "hf" for j in jobs)
    cores = os.cpu_count()
    started, load0, sgemm, n, reps = _driver.start_run("SQuAD throughput, bertlib vs PyTorch", args, with_torch)
    peak = max(sgemm.values()) if sgemm else None
    results = []
    for rnd in range(1, args.rounds + 1):
        for index, job in enumerate(jobs):
            who = (f"bertlib {args.procs} procs x 1 thread" if job.framework == "bertlib"
                   else f"{job.framework} {args.threads} threads")
            print(f"[{job.task} {job.config} seq {job.seq}] round {rnd}/{args.rounds}: {who} ...", flush=True)
            load = _driver.wait_for_quiet(args.quiet_load, args.quiet_wait)
            r = run_job(args, job)
            r.update(load_before=load, job=index, round=rnd, repro=job.repro)
            if "error" in r:
                print(f"    FAILED:\n{r['error']}", flush=True)
            else:
                print(f"    {r['windows_per_s']:.2f} windows/s (median step {r['step_s_median']:.2f} s, "
                      f"warm-up {r['warmup_s']:.1f} s), peak RSS "
                      f"{' / '.join(f'{m:.0f}' for m in r['peak_rss_mb'])} MiB, load {os.getloadavg()[0]:.1f}",
                      flush=True)
            results.append(r)
    results = _driver.median_rounds(results, lambda r: r["windows_per_s"])
    flags = _driver.shell(argv if argv is not None else sys.argv[1:])
    out = [f"Command: `python bench/squad_throughput.py {flags}`".rstrip(),
           f"Machine: {platform.node()}, {cores} cores ({_driver.cpu_model()}), {_driver.mem_gb():.0f} GB RAM; "
           f"date {started:%Y-%m-%d %H:%M}; load average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}",
           _driver.sgemm_line(sgemm, cores, n, reps),
           f"Settings: synthetic SQuAD windows ({LENGTH_NOTES[args.lengths]}), fp32; "
           f"bertlib {args.procs} processes x 1 thread, "
           f"PyTorch 1 process x {args.threads} threads; {args.rounds} round(s), frameworks interleaved in each, "
           "the median round reported with the spread of all rounds. bertlib's prediction rate is the sum of "
           "its processes' (each predicts its own share of the windows; they start together). "
           "MFU counts the model FLOPs of every position computed, padding included (encoder matmuls + "
           "attention products + QA layer; x3 for fine-tuning): prediction in batches cut to their longest "
           "window computes less of it.", ""]
    for task in ("predict", "train"):
        if any(r["task"] == task for r in results):
            what = (f"batch {args.predict_batch} per process" if task == "predict"
                    else f"global batch {args.train_batch}, AdamW, gradient clipping at 1.0, dropout 0.1")
            out += [f"### SQuAD {TASK_NAMES[task]}, windows/s; {what}", ""]
            out += table(results, task, peak)
            out.append("")
    text = "\n".join(out)
    print("\n" + text, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(started=started.isoformat(), sgemm_gflops=sgemm, results=results), f, indent=1)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
