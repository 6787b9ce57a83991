#!/usr/bin/env python3
"""Writes tests/data/head/adam_trajectory.txt: a few torch.optim.AdamW steps (foreach=False, the
single-tensor reference path) on float32 parameters with fixed gradients, with and without weight decay.
tests/test_adam.c replays the same gradients through tbert_adam_step and compares every step.

Format (text, one item per line):
  cases N
  case NAME lr beta1 beta2 eps weight_decay n steps
  p0 v1 ... vn              initial parameters
  g1 v1 ... vn              gradient of step 1
  p1 v1 ... vn              parameters after step 1 ...
Floats are printed with 9 significant digits (round-trips float32).
Run: /opt/golden/bin/python tests/golden/make_adam_golden.py
"""
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "head", "adam_trajectory.txt")


def fmt(t):
    return " ".join("%.9g" % float(x) for x in t.flatten())


def run_case(name, lr, betas, eps, wd, n, steps, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float32))
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    lines = ["case %s %.17g %.17g %.17g %.17g %.17g %d %d" % (name, lr, betas[0], betas[1], eps, wd, n, steps),
             "p0 " + fmt(p.detach())]
    for s in range(steps):
        # gradients of mixed scale, some exactly zero, some tiny (eps matters there)
        grad = torch.randn(n, generator=g, dtype=torch.float32) * (10.0 ** (s % 3 - 1))
        grad[::7] = 0.0
        grad[3::11] *= 1e-6
        p.grad = grad.clone()
        opt.step()
        lines.append("g%d %s" % (s + 1, fmt(grad)))
        lines.append("p%d %s" % (s + 1, fmt(p.detach())))
    return lines


def main():
    cases = [
        run_case("adam_nowd", 1e-3, (0.9, 0.999), 1e-8, 0.0, 64, 6, 1),
        run_case("adamw_wd", 1e-2, (0.9, 0.999), 1e-8, 0.01, 64, 6, 2),
        run_case("adamw_odd", 3e-4, (0.8, 0.95), 1e-6, 0.1, 33, 5, 3),
    ]
    with open(OUT, "w") as f:
        f.write("cases %d\n" % len(cases))
        for c in cases:
            f.write("\n".join(c) + "\n")
    print("wrote", OUT, "torch", torch.__version__)


if __name__ == "__main__":
    main()
