"""The first thing to run on a machine with CUDA GPUs: short runs of every GPU path, one table.

    python bench/gpu_check.py            # or: make gpu-check
    python bench/gpu_check.py --quick    # the tiny model only (about a minute)

Nothing in bertlib's test suite has a GPU, so this is where the CUDA path first runs. In under ten
minutes (BERT-base's runs are a few dozen steps) it runs bert-pretrain with the tiny preset and
with BERT-base, on 1 GPU and on all of them, eager and graph, fp32 and fp16 (fp16 is graph-only);
a save at step 3 of 6 and a run resumed from it, whose losses must equal the uninterrupted run's;
and a SQuAD fine-tuning step from the tiny checkpoint. Each row: samples/s (the last log period), the last loss, whether
the resume was identical, the peak GPU memory nvidia-smi saw, and ok or the error's last line.

Paste the whole output (table and the header lines above it) into an issue.

On a machine without a usable GPU it says why and exits 0: there is nothing to check.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["--config", "tiny", "--batch_size_per_device", "32"]
BASE = ["--config", "base", "--batch_size_per_device", "32"]
BUDGET_SECONDS = 9 * 60
DEVICE = "cuda"


class MemoryWatch:
    """The peak of nvidia-smi's memory.used (MiB, summed over the GPUs) while a run lasts."""

    def __init__(self):
        self.peak, self.available = 0, shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                      "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak = max(self.peak, sum(int(x) for x in out.split() if x.isdigit()))
            except (OSError, subprocess.SubprocessError, ValueError):
                return
            self._stop.wait(0.5)

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def text(self) -> str:
        return f"{self.peak} MiB" if self.available and self.peak else "n/a"


def _run(cmd, timeout):
    """(returncode, combined output) of a CLI run; a timeout is a failure, not a hang."""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        return -1, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}"


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "Error" in line]
    return (errors or lines or ["(no output)"])[-1][:100]


def _records(log_dir: Path) -> list[dict]:
    path = log_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pretrain(work: Path, name: str, model, nproc, mode, fp16, iters, timeout, extra=(), every=None):
    """One bert-pretrain run: a table row (and its log records)."""
    log = work / name
    cmd = [sys.executable, "-m", "bertlib.cli.pretrain", *model, "--device", DEVICE,
           "--gpu_num_per_node", str(nproc), "--mode", mode, "--iter_num", str(iters),
           "--loss_print_every_n_iter", str(every or max(1, iters // 2)), "--log_dir", str(log),
           "--no_progress", *(["--use_fp16"] if fp16 else []), *extra]
    with MemoryWatch() as memory:
        code, output = _run(cmd, timeout)
    records = _records(log)
    row = {"run": name, "gpus": nproc, "mode": mode, "precision": "fp16" if fp16 else "fp32",
           "samples/s": f"{records[-1]['sentences_per_sec']:.1f}" if records else "-",
           "loss": f"{records[-1]['total_loss']:.4f}" if records else "-",
           "resume identical": "", "peak memory": memory.text(),
           "status": "ok" if code == 0 else f"FAILED: {_last_error(output)}"}
    return row, records


def resume_check(work: Path, name: str, model, mode, fp16, timeout):
    """6 steps saving at 3, then a run resumed from that step-3 checkpoint: equal losses at 3-5?"""
    full, full_records = pretrain(work, f"{name}-full", model, 1, mode, fp16, 6, timeout,
                                  ["--model_save_every_n_iter", "3", "--model_save_dir",
                                   str(work / f"{name}-ck")], every=1)
    resumed, resumed_records = pretrain(work, f"{name}-resumed", model, 1, mode, fp16, 6, timeout,
                                        ["--model_load_dir", str(work / f"{name}-ck" / "step_3")],
                                        every=1)
    losses = lambda rs: [(r["iter"], r["total_loss"]) for r in rs if r["iter"] >= 3]  # noqa: E731
    failed = [r for r in (full, resumed) if r["status"] != "ok"]
    row = dict(full, run=name)
    row["resume identical"] = "-" if failed else (
        "yes" if losses(full_records) == losses(resumed_records) and losses(full_records) else "NO")
    if failed:
        row["status"] = failed[0]["status"]
    return row


def squad_step(work: Path, timeout, fp16: bool = False):
    """Two SQuAD fine-tuning steps on the sample data from the tiny checkpoint of the resume check
    (fp32 eager, or fp16, which runs in graph mode)."""
    from bertlib.datasets import find_data

    data = find_data("sample")
    ckpt = work / "tiny-resume-eager-ck" / "step_6"
    out = work / ("squad-fp16" if fp16 else "squad")
    cmd = [sys.executable, "-m", "bertlib.cli.squad", "--do_train", "--device", DEVICE,
           "--init_checkpoint", str(ckpt),   # a checkpoint carries its tokenizer
           "--train_file", str(data.squad_train), "--max_train_examples", "64", "--iter_num", "2",
           "--batch_size_per_device", "8", "--max_seq_length", "128", "--doc_stride", "64",
           "--loss_print_every_n_iter", "1", "--output_dir", str(out), "--no_progress",
           *(["--use_fp16"] if fp16 else [])]
    with MemoryWatch() as memory:
        code, output = _run(cmd, timeout)
    records = _records(out)
    return {"run": "squad-step" + ("-fp16" if fp16 else ""), "gpus": 1, "mode": "graph" if fp16 else "eager",
            "precision": "fp16" if fp16 else "fp32",
            "samples/s": f"{records[-1]['sentences_per_sec']:.1f}" if records else "-",
            "loss": f"{records[-1]['loss']:.4f}" if records else "-", "resume identical": "",
            "peak memory": memory.text(),
            "status": "ok" if code == 0 else f"FAILED: {_last_error(output)}"}


def print_table(rows):
    columns = ["run", "gpus", "mode", "precision", "samples/s", "loss", "resume identical",
               "peak memory", "status"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]).ljust(widths[c]) for c in columns) + " |", flush=True)


def header(gpus: int):
    from bertlib import __version__, runtime

    flow = runtime.import_oneflow()
    names = "?"
    if shutil.which("nvidia-smi"):
        names = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout.strip().replace("\n", "; ")
    print(f"bertlib {__version__}, OneFlow {flow.__version__}, Python {sys.version.split()[0]}")
    print(f"GPUs seen by OneFlow: {gpus} ({names})", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model only")
    parser.add_argument("--keep", action="store_true", help="keep the runs' directories")
    parser.add_argument("--iters", type=int, default=20, help="steps of each tiny run")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: try this script itself on one process of a machine without a GPU "
                             "(its fp16 rows fail there)")
    args = parser.parse_args(argv)
    from bertlib import runtime

    global DEVICE
    DEVICE = args.device
    gpus = runtime.cuda_device_count() if DEVICE == "cuda" else 1
    if gpus == 0:
        print(f"gpu_check: no usable CUDA GPU here: {runtime.no_gpu_reason()}.")
        print("gpu_check: nothing to check on this machine (it runs on a machine with CUDA GPUs); "
              "exit 0.")
        return 0
    header(gpus if DEVICE == "cuda" else 0)
    start = time.time()
    left = lambda: BUDGET_SECONDS - (time.time() - start)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="bertlib-gpu-check-"))
    rows = []
    n = args.iters
    plan = [("tiny", TINY, 1, "eager", False, n), ("tiny", TINY, 1, "graph", False, n),
            ("tiny", TINY, 1, "graph", True, n)]
    if gpus > 1:
        plan += [("tiny", TINY, gpus, "eager", False, n), ("tiny", TINY, gpus, "graph", False, n),
                 ("tiny", TINY, gpus, "graph", True, n)]
    try:
        for model_name, model, nproc, mode, fp16, iters in plan:
            name = f"{model_name}-{nproc}gpu-{mode}-{'fp16' if fp16 else 'fp32'}"
            rows.append(pretrain(work, name, model, nproc, mode, fp16, iters, max(30, left()))[0])
        rows.append(resume_check(work, "tiny-resume-eager", TINY, "eager", False, max(30, left())))
        rows.append(resume_check(work, "tiny-resume-graph", TINY, "graph", False, max(30, left())))
        rows.append(resume_check(work, "tiny-resume-graph-fp16", TINY, "graph", True, max(30, left())))
        rows.append(squad_step(work, max(30, left())))
        rows.append(squad_step(work, max(30, left()), fp16=True))
        if not args.quick:
            base_plan = [(1, "eager", False), (1, "graph", True)]
            if gpus > 1:
                base_plan += [(gpus, "eager", False), (gpus, "graph", True)]
            for nproc, mode, fp16 in base_plan:
                if left() < 60:
                    rows.append({"run": f"base-{nproc}gpu-{mode}", "gpus": nproc, "mode": mode,
                                 "precision": "fp16" if fp16 else "fp32", "samples/s": "-",
                                 "loss": "-", "resume identical": "", "peak memory": "-",
                                 "status": "skipped: the 10-minute budget is spent"})
                    continue
                name = f"base-{nproc}gpu-{mode}-{'fp16' if fp16 else 'fp32'}"
                rows.append(pretrain(work, name, BASE, nproc, mode, fp16, 30, left())[0])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ngpu_check: {len(rows)} runs in {time.time() - start:.0f} s")
    print_table(rows)
    failed = [r for r in rows if not r["status"].startswith(("ok", "skipped"))
              or r["resume identical"] == "NO"]
    print("gpu_check: all ok" if not failed else f"gpu_check: {len(failed)} run(s) failed; paste "
          "this output into an issue")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
