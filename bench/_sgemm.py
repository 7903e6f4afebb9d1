"""Best-of-N sgemm rate (2048^3, float32) of one process: OneFlow (via bertlib.runtime), NumPy or PyTorch.

Prints one number, GFLOP/s. The drivers (bench/pretrain_throughput.py, bench/squad_throughput.py)
run one OneFlow process per core at once and one NumPy process per core at once (the way bertlib
uses the cores: its CPU path does the Linear matmuls with NumPy, whose OpenBLAS is faster than the
one OneFlow bundles on some CPUs), and one PyTorch process with threads = cores; the largest total
is the sgemm limit of the CPU that model FLOP utilisation is measured against.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=["oneflow", "numpy", "torch"], required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    n = args.n
    if args.framework == "torch":
        import torch

        torch.set_num_threads(args.threads)
        a, b = torch.randn(n, n), torch.randn(n, n)

        def run():
            torch.mm(a, b)
    elif args.framework == "numpy":
        # OpenBLAS reads its thread count when it loads: set before numpy is imported
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)

        def run():
            np.matmul(a, b)
    else:
        sys.path.insert(0, os.path.dirname(HERE))
        from bertlib.runtime import import_oneflow

        flow = import_oneflow()
        a, b = flow.randn(n, n), flow.randn(n, n)

        def run():
            flow.matmul(a, b).numpy()
    run()
    best = float("inf")
    for _ in range(args.reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    print(f"{2 * n ** 3 / best / 1e9:.2f}")


if __name__ == "__main__":
    main()
