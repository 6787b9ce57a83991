#!/usr/bin/env bash
# `tbert train --finetune K --device cuda` (issue 15: the trainable stack on the device, src/finetune_stack_cuda.c)
# against the same run on the CPU, end to end, on the committed random model deep4_f32 (4 layers, H 32) and the
# 40-line tests/data/head/tiny.tsv, dropout on (0.1 hidden / 0.1 attention, the default). The CPU run goes first and
# the CUDA run reads the frozen lower layers' output from the same row store (as issue 15's peer comparison feeds
# both the same cached layers): that cache is bf16, so lower layers computed on each device (fp32 results ~1e-6
# apart) would round some elements to neighbouring bf16 values, 4e-3 apart, and the comparison would measure the
# cache's rounding instead of the trained stack (measured: moments 4.6e-5 apart with separate caches). The
# device's frozen encoder is test_emu_e2e's and test_cuda_parity's. Runs in the emu configuration (the emulated
# device) and on a machine with a real GPU; elsewhere exit 77 (tests/skips-allowed.txt).
#   1. K = 1 and K = all (embeddings too), fp32: every tensor of best.safetensors and last.safetensors (finetune.*,
#      the head, AdamW's moments) within CONVENTIONS' CUDA fp32 vs CPU tolerance, ||d||/||ref|| < 1e-5 and
#      |d| <= 1e-4 per element, after 21 AdamW steps (measured on the emulated device: ratios <= 7e-7: each step's
#      gradients differ by ~3e-7 relative, the CPU and cuBLAS summing in other orders, and AdamW's normalised steps
#      do not amplify that). The exception is the key projections' biases: their exact gradient is 0 (softmax
#      ignores a shift of a whole score row), so both runs step them by the sign of rounding noise; they are held
#      to |d| <= 2 x steps x encoder lr (what AdamW can move them) and their moments are not compared. The
#      train/val/test losses in metrics.json within 1e-5 relative, the same best epoch, and `predict --device cpu`
#      with each head within 1e-4 per probability (printed with 6 decimals).
#   2. bf16 (--precision bf16: bf16 activations and GEMM inputs, float32 masters and moments on the host; its own
#      lower-layer cache entry, keyed by precision): the trained head's probabilities (predict --device cuda, as its
#      recipe asks for bf16) stay within 1e-2 of the fp32 CPU run's after 21 steps of bf16 rounding (measured
#      1.9e-4 on the emulated device; the printed maximum is the measurement).
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
PY=${TBERT_PYTHON:-python3}
MODEL=$TESTS/models/deep4_f32
DATA=$TESTS/data/head/tiny.tsv
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors" "$DATA"
tl_require_cuda_build
tl_require_python numpy safetensors
tl_workdir tbert_emu_finetune
TMP=$TL_WORK
LR=3e-3
train() { # out device extra...
    local out=$1 dev=$2
    shift 2
    TBERT_CACHE=$TMP/cache "$BIN" train --model "$MODEL" --data "$DATA" --out "$out" --max-len 32 --hidden 16 \
        --dropout 0.1 --epochs 3 --batch 4 --seed 5 --lr 3e-3 --finetune-epochs 3 --encoder-lr $LR --device "$dev" \
        --quiet "$@" >/dev/null 2>"$out.err" || { fail "train --device $dev $*: exit $?: $(cat "$out.err")"; return 1; }
}
predict() { # head out device
    cut -f2 "$DATA" | TBERT_CACHE=$TMP/cache "$BIN" predict --model "$MODEL" --head "$1" --device "${3:-cpu}" \
        >"$2" 2>"$2.err" || fail "predict with $1: exit $?: $(cat "$2.err")"
}

compare() { # got_dir ref_dir what prob_atol
    "$PY" - "$1" "$2" "$3" "$LR" "$4" <<'EOF' || fail "$3"
import json, sys
import numpy as np
from safetensors.numpy import load_file
got, ref, what, lr, patol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
bad = []
mg, mr = json.load(open(got + "/metrics.json")), json.load(open(ref + "/metrics.json"))
for f in ("best.safetensors", "last.safetensors"):
    a, b = load_file(got + "/" + f), load_file(ref + "/" + f)
    if set(a) != set(b):
        bad.append("%s: tensor names differ" % f)
        continue
    worst = (0.0, "")
    for k in sorted(b):
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        if x.shape != y.shape or not np.all(np.isfinite(x)):
            bad.append("%s %s: shape or NaN" % (f, k))
            continue
        d = np.abs(x - y)
        if k.endswith("attention.self.key.bias"):
            if k.startswith("optim."):
                continue
            steps = 21  # 3 epochs x ceil(28 training rows / batch 4)
            if d.max() > 2 * steps * lr:
                bad.append("%s %s: |d| %.2e > 2 steps lr" % (f, k, d.max()))
            continue
        r = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
        if k.startswith("optim.v.") or k.startswith("optim.m."):
            ok = r < 1e-5  # the moments' scale is not 1: the ratio alone
        else:
            ok = r < 1e-5 and d.max() <= 1e-4
        if not ok:
            bad.append("%s %s: ratio %.2e max|d| %.2e" % (f, k, r, d.max()))
        worst = max(worst, (r, k))
    print("%s: %s: %d tensors, worst ||d||/||ref|| %.2e (%s)" % (what, f, len(b), worst[0], worst[1]))
if mg["best_epoch"] != mr["best_epoch"]:
    bad.append("best epoch %s vs %s" % (mg["best_epoch"], mr["best_epoch"]))
for split in ("train", "val", "test"):
    lg, lr_ = mg[split].get("loss"), mr[split].get("loss")
    if lg is None or lr_ is None or abs(lg - lr_) > 1e-5 * abs(lr_):
        bad.append("%s loss %s vs %s" % (split, lg, lr_))
if bad:
    print("%s: FAIL\n  " % what + "\n  ".join(bad[:12]), file=sys.stderr)
    sys.exit(1)
EOF
}

probs() { # got ref what atol
    "$PY" - "$1" "$2" "$3" "$4" <<'EOF' || fail "$3"
import sys
def load(p):
    return [float(l.split("\t")[1]) for l in open(p) if l.strip()]  # "label<TAB>P(positive)", 6 decimals
g, r = load(sys.argv[1]), load(sys.argv[2])
atol = float(sys.argv[4])
d = max(abs(a - b) for a, b in zip(g, r)) if g and len(g) == len(r) else float("inf")
print("%s: %d probabilities, max |d| %.2e (<= %g)" % (sys.argv[3], len(g), d, atol))
sys.exit(0 if d <= atol else 1)
EOF
}

# ---- 1. fp32: K = 1 and K = all ----
for K in 1 all; do
    train "$TMP/cpu.$K" cpu --finetune "$K" && train "$TMP/cuda.$K" cuda --finetune "$K" || continue
    compare "$TMP/cuda.$K" "$TMP/cpu.$K" "--finetune $K: cuda fp32 vs cpu" 1e-4
    predict "$TMP/cpu.$K" "$TMP/p.cpu.$K"
    predict "$TMP/cuda.$K" "$TMP/p.cuda.$K"
    probs "$TMP/p.cuda.$K" "$TMP/p.cpu.$K" "--finetune $K: predict with the cuda-trained head vs the cpu-trained" 1e-4
done

# ---- 2. bf16 ----
if train "$TMP/bf16" cuda --finetune 1 --precision bf16; then
    predict "$TMP/bf16" "$TMP/p.bf16" cuda # a bf16 head's recipe needs a device computing bf16
    [ -f "$TMP/p.cpu.1" ] && probs "$TMP/p.bf16" "$TMP/p.cpu.1" "--finetune 1: cuda bf16 vs cpu fp32" 1e-2
fi

# ---- 3. kill and resume on the device: bit-identical to an uninterrupted run ----
if train "$TMP/full" cuda --finetune 2; then
    (TBERT_CACHE=$TMP/cache TBERT_TEST_KILL_AT=epoch:2 exec "$BIN" train --model "$MODEL" --data "$DATA" \
        --out "$TMP/res" --max-len 32 --hidden 16 --dropout 0.1 --epochs 3 --batch 4 --seed 5 --lr 3e-3 \
        --finetune-epochs 3 --encoder-lr $LR --device cuda --quiet --finetune 2 >/dev/null 2>&1)
    rc=$?
    [ $rc -eq 137 ] || fail "the run with TBERT_TEST_KILL_AT=epoch:2 did not die of SIGKILL (exit $rc)"
    train "$TMP/res" cuda --finetune 2 --resume &&
        for f in best.safetensors last.safetensors; do
            cmp -s "$TMP/full/$f" "$TMP/res/$f" || fail "resume on the device: $f differs from the uninterrupted run"
        done && echo "kill after epoch 2 + resume on the device: best/last.safetensors identical"
fi

[ "$fails" -eq 0 ] || { echo "test_emu_finetune: $fails failure(s)" >&2; exit 1; }
echo "test_emu_finetune: OK"
