"""What the benchmark drivers share (standard library only): running workers, the sgemm limit, medians.

Used by bench/pretrain_throughput.py and bench/squad_throughput.py, which run every measurement in
a fresh worker process: bertlib's in this interpreter (``-m oneflow.distributed.launch`` for more
than one process), Hugging Face's in the reference venv (``.bench-venv-ref``).
"""
from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REPO_REF_PYTHON = os.path.join(REPO, ".bench-venv-ref", "bin", "python")
# the reference interpreter (torch + transformers): $BENCH_REF_PYTHON, else the repository's .bench-venv-ref
DEFAULT_REF_PYTHON = os.environ.get("BENCH_REF_PYTHON") or REPO_REF_PYTHON


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, timeout, env=None) -> tuple[int, str]:
    """Run cmd in its own session (so a timeout kills every rank); return (exit code, output tail)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, cwd=REPO)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -1, f"timed out after {timeout} s\n{out[-3000:]}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # nothing of the job may outlive it
        except (ProcessLookupError, PermissionError):
            pass
    lines = [line for line in out.splitlines() if "libibverbs" not in line]
    return proc.returncode, "\n".join(lines[-40:])


def bertlib_command(worker: str, args: list, procs: int) -> list:
    """The command running ``worker`` in ``procs`` OneFlow processes (the launcher for more than one)."""
    if procs == 1:
        return [sys.executable, worker, *args]
    return [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", str(procs),
            "--master_port", str(free_port()), worker, *args]


def bertlib_env(**extra) -> dict:
    """One thread per bertlib process (OneFlow's and NumPy's OpenBLAS both read OMP_NUM_THREADS)."""
    return dict(os.environ, GLOG_minloglevel="2", OMP_NUM_THREADS="1", **extra)


def ref_env(threads: int) -> dict:
    """The reference venv's environment: none of this interpreter's PYTHON* / VIRTUAL_ENV settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def wait_for_quiet(limit, max_wait) -> float:
    """Wait until the 1-minute load average drops below ``limit`` (or ``max_wait`` s); return it."""
    waited = 0
    while limit is not None and os.getloadavg()[0] >= limit and waited < max_wait:
        time.sleep(10)
        waited += 10
    return os.getloadavg()[0]


def measure_sgemm(ref_python, cores, with_torch, n: int = 2048, reps: int = 8) -> dict:
    """sgemm GFLOP/s of the whole CPU, three ways: one OneFlow process per core at once, one NumPy
    process per core at once (1 thread each: bertlib's CPU path does its Linear matmuls with NumPy),
    and PyTorch with threads = cores. The largest is the sgemm limit of the CPU."""
    out = {}
    script = os.path.join(HERE, "_sgemm.py")
    size = ["--n", str(n), "--reps", str(reps)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="2")
    for framework in ("oneflow", "numpy"):
        procs = [subprocess.Popen([sys.executable, script, "--framework", framework, *size], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO) for _ in range(cores)]
        try:
            out[framework] = sum(float(p.communicate(timeout=600)[0].split()[-1]) for p in procs)
        except (ValueError, IndexError, subprocess.TimeoutExpired):
            pass
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    if with_torch:
        try:
            res = subprocess.run([ref_python, script, "--framework", "torch", "--threads", str(cores), *size],
                                 capture_output=True, text=True, env=ref_env(cores), timeout=600, cwd=REPO)
            out["torch"] = float(res.stdout.split()[-1])
        except (ValueError, IndexError, subprocess.TimeoutExpired):
            pass
    return out


def sgemm_line(sgemm: dict, cores: int, n: int = 2048, reps: int = 8) -> str:
    names = {"oneflow": f"OneFlow {cores} procs x 1 thread", "numpy": f"NumPy {cores} procs x 1 thread",
             "torch": f"PyTorch 1 proc x {cores} threads"}
    peak = max(sgemm.values()) if sgemm else None
    return (f"sgemm limit of the {cores} cores ({n}^3 float32, best of {reps}, all cores busy at once): "
            + ", ".join(f"{names[k]} {v:.0f} GFLOP/s" for k, v in sgemm.items())
            + (f"; MFU is measured against the largest, {peak:.0f} GFLOP/s" if peak else "; not measured"))


def start_run(title: str, args, with_torch: bool):
    """What every benchmark does first: make sure of the reference venv, print the header line,
    wait for a quiet machine and measure the sgemm limit. Returns (started, load at start, sgemm
    dict, n, reps); ``args`` needs ref_python, quick, quiet_load and quiet_wait."""
    import datetime

    if with_torch:
        ensure_reference_env(args.ref_python)
    cores = os.cpu_count()
    started = datetime.datetime.now()
    load0 = os.getloadavg()[0]
    print(f"# {title}, {started:%Y-%m-%d %H:%M}, {platform.node()}, {cores} cores, {cpu_model()}", flush=True)
    wait_for_quiet(args.quiet_load, args.quiet_wait)
    n, reps = (1024, 3) if args.quick else (2048, 8)
    # PyTorch's sgemm is part of the limit whenever its venv is there (MFU then does not depend on the rows run)
    sgemm = measure_sgemm(args.ref_python, cores, with_torch=with_torch or os.path.exists(args.ref_python),
                          n=n, reps=reps)
    print(sgemm_line(sgemm, cores, n, reps), flush=True)
    return started, load0, sgemm, n, reps


def ensure_reference_env(ref_python: str):
    if os.path.exists(ref_python):
        return
    if os.path.abspath(ref_python) != REPO_REF_PYTHON:
        raise SystemExit(f"--ref-python {ref_python} does not exist")
    print("reference venv missing: running bench/setup_reference_env.sh (torch + transformers, Python 3.11)",
          flush=True)
    subprocess.run(["bash", os.path.join(HERE, "setup_reference_env.sh")], check=True, cwd=REPO)


def median_rounds(results, rate) -> list:
    """One result per job (``r["job"]``): the median of its rounds' ``rate(r)`` and their spread.

    The kept result is the round closest to the median (its other figures: RSS, CPU time...), with
    ``rate_median``, ``rate_min``, ``rate_max`` and ``rounds`` (every round's rate, in order) added.
    A job whose rounds all failed keeps its first failure.
    """
    by_job = {}
    for r in results:
        by_job.setdefault(r["job"], []).append(r)
    kept = []
    for job in sorted(by_job):
        ok = [r for r in by_job[job] if "error" not in r]
        if not ok:
            kept.append(by_job[job][0])
            continue
        rates = [rate(r) for r in ok]
        med = statistics.median(rates)
        chosen = dict(min(ok, key=lambda r: abs(rate(r) - med)))
        chosen.update(rate_median=med, rate_min=min(rates), rate_max=max(rates), rounds=rates,
                      failed_rounds=len(by_job[job]) - len(ok))
        kept.append(chosen)
    return kept


def spread(r) -> str:
    """``min-max (+-x%)`` of a job's rounds."""
    lo, hi, med = r["rate_min"], r["rate_max"], r["rate_median"]
    half = 100 * (hi - lo) / 2 / med if med else 0.0
    failed = f", {r['failed_rounds']} round(s) failed" if r.get("failed_rounds") else ""
    return f"{lo:.2f}-{hi:.2f} (±{half:.0f}%{failed})"


def shell(argv) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError):
        return 0.0


def failure_line(r) -> str:
    err = r.get("error", "").strip()
    return err.splitlines()[-1][:100].replace("|", "/") if err else "?"
