#!/usr/bin/env python3
"""Writes tests/data/finetune/optim_trajectory.txt: 12 steps of torch.optim.AdamW (foreach=False, the
single-tensor path) driven by transformers.get_linear_schedule_with_warmup (3 warm-up steps of 10, so steps 10
and 11 run at learning rate 0) with torch.nn.utils.clip_grad_norm_ (max norm 1.0) before each step, on four
float32 tensors in two learning-rate groups (encoder, head), weight decay on the weights and off on the biases,
as tbert's fine-tuning optimiser groups them. The gradients are fixed (seeded), scaled per step so that the
global norm is above the max norm on some steps (clipped) and below it on others.
tests/test_optim.c replays the same gradients through tbert_optim_step and compares every step.

Format (text, one item per line; all tensors concatenated in list order):
  optim lr_head lr_encoder beta1 beta2 eps weight_decay clip_norm warmup_steps total_steps steps
  tensors N
  tensor NAME GROUP DECAY NDIM D0 [D1]   GROUP 0 = head, 1 = encoder (include/tbert/params.h); DECAY 0/1
  p0 v1 ... vn                          initial values
  step S LR_HEAD LR_ENCODER NORM CLIPPED   LRs used by step S (1-based), clip_grad_norm_'s total norm
  g v1 ... vn                           gradient given to step S (before clipping)
  p v1 ... vn                           values after step S
Floats are printed with 9 significant digits (round-trips float32), configuration values with 17.
Run: /opt/golden/bin/python tests/golden/make_optim_golden.py
"""
import os

import torch
from transformers import get_linear_schedule_with_warmup

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "finetune", "optim_trajectory.txt")

LR_HEAD, LR_ENC = 1e-2, 3e-3
BETAS, EPS, WD = (0.9, 0.999), 1e-8, 0.05
CLIP, WARMUP, TOTAL, STEPS = 1.0, 3, 10, 12
# (name, group, decay, shape)
TENSORS = [
    ("encoder.layer.1.output.dense.weight", 1, True, (6, 5)),
    ("encoder.layer.1.output.dense.bias", 1, False, (6,)),
    ("head.fc2.weight", 0, True, (1, 6)),
    ("head.fc2.bias", 0, False, (1,)),
]
# per-step gradient scale: N(0,1) over 43 values has norm ~6.5, so 0.5 clips and 0.05 does not
SCALES = [0.05, 0.5, 0.02, 1.5, 0.1, 0.08, 0.4, 0.03, 2.0, 0.06, 0.7, 0.04]


def fmt(ts):
    return " ".join("%.9g" % float(x) for t in ts for x in t.detach().flatten())


def main():
    assert len(SCALES) == STEPS
    g = torch.Generator().manual_seed(15)
    params = [torch.nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float32) * 0.5)
              for _, _, _, shape in TENSORS]
    groups = []
    for (name, grp, decay, _), p in zip(TENSORS, params):
        groups.append({"params": [p], "lr": LR_HEAD if grp == 0 else LR_ENC, "weight_decay": WD if decay else 0.0})
    opt = torch.optim.AdamW(groups, lr=LR_HEAD, betas=BETAS, eps=EPS, foreach=False)
    sched = get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)
    lines = ["optim %.17g %.17g %.17g %.17g %.17g %.17g %.17g %d %d %d" %
             (LR_HEAD, LR_ENC, BETAS[0], BETAS[1], EPS, WD, CLIP, WARMUP, TOTAL, STEPS),
             "tensors %d" % len(TENSORS)]
    for name, grp, decay, shape in TENSORS:
        lines.append("tensor %s %d %d %d %s" % (name, grp, int(decay), len(shape), " ".join(str(d) for d in shape)))
    lines.append("p0 " + fmt(params))
    n_clipped = 0
    for s in range(STEPS):
        grads = []
        for p in params:
            gr = torch.randn(p.shape, generator=g, dtype=torch.float32) * SCALES[s]
            grads.append(gr.clone())
            p.grad = gr
        lrs = [pg["lr"] for pg in opt.param_groups]
        lr_head, lr_enc = lrs[2], lrs[0]
        assert lrs[3] == lr_head and lrs[1] == lr_enc
        norm = float(torch.nn.utils.clip_grad_norm_(params, CLIP, foreach=False))
        clipped = int(norm > CLIP)
        n_clipped += clipped
        opt.step()
        sched.step()
        lines.append("step %d %.17g %.17g %.9g %d" % (s + 1, lr_head, lr_enc, norm, clipped))
        lines.append("g " + fmt(grads))
        lines.append("p " + fmt(params))
    assert 3 <= n_clipped <= STEPS - 3, n_clipped
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", OUT, "torch", torch.__version__, "clipped steps", n_clipped)


if __name__ == "__main__":
    main()
