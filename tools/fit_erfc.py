#!/usr/bin/env python3
"""Fit the erfc approximation that bertlib.fast.oneflow_ops' GELU uses; print its coefficients and errors.

GELU(x) = x Phi(x), and for z = |x| / sqrt(2) >= 0 the tail probability is q = erfc(z) / 2. We write

    erfc(z) = t R(t) exp(-z^2),   t = 1 / (1 + p z),   R a polynomial of degree d,

so that the only transcendental function left is one exponential (which the GELU shares with its
derivative). R is fitted to erfc(z) exp(z^2) on z in [0, zmax] by Lawson's iteratively re-weighted
least squares, which drives the weighted least-squares fit towards the minimax fit of the chosen
error: the absolute error of erfc (what float32 resolves in Phi = 1 - q near 1 and in GELU's
output) unless --relative asks for the relative one.

    python tools/fit_erfc.py                 # the degree and p bertlib uses
    python tools/fit_erfc.py --degrees 4 5 6 7 --p 0.3 0.35 0.4 0.45 0.5

Needs numpy only; the reference erfc is Python's math.erfc (double precision).
"""
from __future__ import annotations

import argparse
import math

import numpy as np


def fit(degree: int, p: float, relative: bool, zmax: float, iterations: int = 300):
    z = np.concatenate([np.linspace(0.0, 4.0, 8001), np.linspace(4.0, zmax, 4001)[1:]])
    erfc = np.array([math.erfc(v) for v in z])
    scaled = erfc * np.exp(z * z)                      # smooth, in (0, 1]: the part R(t) models
    t = 1.0 / (1.0 + p * z)
    basis = t[:, None] * t[:, None] ** np.arange(degree + 1)[None, :]     # t * t^k
    # error of erfc = (fit - scaled) * exp(-z^2) (absolute) or (fit - scaled) / scaled (relative)
    scale = 1.0 / scaled if relative else np.exp(-z * z)
    weights = np.ones_like(z)
    for _ in range(iterations):
        w = np.sqrt(weights) * scale
        coef, *_ = np.linalg.lstsq(basis * w[:, None], scaled * w, rcond=None)
        err = np.abs(basis @ coef - scaled) * scale
        weights *= err / err.max() + 1e-12
        weights /= weights.sum()
    return coef, float(err.max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--degrees", type=int, nargs="+", default=[6])
    ap.add_argument("--p", type=float, nargs="+", default=[0.45])
    ap.add_argument("--relative", action="store_true", help="minimise the relative error of erfc instead")
    ap.add_argument("--zmax", type=float, default=12.0, help="fit z = |x| / sqrt 2 over [0, zmax]")
    args = ap.parse_args()
    kind = "relative" if args.relative else "absolute"
    for degree in args.degrees:
        for p in args.p:
            coef, err = fit(degree, p, args.relative, args.zmax)
            of_q = err if args.relative else err / 2     # q = erfc / 2: same relative, half the absolute error
            print(f"degree {degree}, p {p}: max {kind} error of erfc {err:.2e} (of q = Phi(-|x|): {of_q:.2e})")
            print("    R coefficients of t^0 .. t^%d: (%s)" % (degree, ", ".join(repr(float(c)) for c in coef)))


if __name__ == "__main__":
    main()
