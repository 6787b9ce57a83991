#!/usr/bin/env bash
# `tbert train --finetune K` (issue 15) end to end on the committed random model deep4_f32 (4 layers, H 32) and the
# 40-line tests/data/head/tiny.tsv, CPU:
#  - K = 0 is today's run: best/last.safetensors byte-identical to a run without the option;
#  - K = 1 and K = all learn: the training loss of the last epoch is below the first's, and every trained tensor
#    differs from the base model's;
#  - the checkpoint holds exactly the trained tensors (K = 1: encoder.layer.3.* only; all: every layer and the
#    embeddings) as float32 "finetune.*" with the base model's shapes, the recipe's "finetune" key names K and the
#    sha256 of the base model.safetensors; last.safetensors adds optim.m/v of every trained tensor (head included)
#    and optim_step = epochs x steps per epoch;
#  - kill after epoch 2 (TBERT_TEST_KILL_AT=epoch:2, 1 thread; must die of SIGKILL), resume with 2 threads:
#    best/last.safetensors byte-identical to an uninterrupted 2-thread run; a resume with another --encoder-lr is
#    refused in one line; the same with --precision bf16 (bf16 products in the trained layers), whose tensors are close
#    to but not the float32 run's; a bf16 run resumed in float32 is refused, and --precision tf32 on the CPU;
#  - `tbert score` with the K = 1 head reproduces training's validation scores (oof.safetensors) within 2e-3;
#  - the lower-layer cache: a second K = 1 run reads every document's frozen-layer output from the row store;
#  - cross-fitting (--cv 3, 2 windows, normalize): the threshold's operating point is out-of-fold and best holds the
#    kept model's trained tensors; killed in its final fit and resumed, it ends in the same files;
#  - --finetune 5 on a 4-layer model is refused (exit 2, one line).
set -u
BIN=${TBERT_BIN:?TBERT_BIN not set}
TESTS=${TBERT_TESTS_DIR:-$(cd "$(dirname "$0")" && pwd)}
MODEL=$TESTS/models/deep4_f32
DATA=$TESTS/data/head/tiny.tsv
PY=${TBERT_PYTHON:-python3}
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
tl_require_fixture "$MODEL/model.safetensors" "$DATA"
tl_require_python numpy safetensors
tl_workdir tbert_finetune
TMP=$TL_WORK
export TBERT_CACHE=$TMP/cache
fail=0
train() { # out_dir extra...  (exec: when run with &, $! is tbert itself)
    local out=$1; shift
    exec "$BIN" train --model "$MODEL" --data "$DATA" --out "$out" --device cpu --max-len 32 --hidden 16 --dropout 0.1 --epochs 3 \
        --batch 4 --seed 5 --lr 3e-3 "$@"
}

# K = 0: the same bits as a run without the option
(train "$TMP/k0a" --quiet) >/dev/null 2>"$TMP/k0a.err" || { echo "FAIL: K=0 reference run: $(cat "$TMP/k0a.err")"; exit 1; }
(train "$TMP/k0b" --quiet --finetune 0) >/dev/null 2>"$TMP/k0b.err" || { echo "FAIL: --finetune 0 run: $(cat "$TMP/k0b.err")"; exit 1; }
for f in best.safetensors last.safetensors; do
    cmp -s "$TMP/k0a/$f" "$TMP/k0b/$f" || { echo "FAIL: --finetune 0: $f differs from a run without the option"; fail=1; }
done

FT=(--finetune-epochs 4 --encoder-lr 3e-3)
check_ckpt() { # dir K embeddings(0|1) epochs
    "$PY" - "$1" "$2" "$3" "$4" "$MODEL" <<'EOF' || fail=1
import hashlib, json, math, struct, sys
import numpy as np
from safetensors.numpy import load_file
d, K, emb, epochs, model = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5]
bad = []
def meta(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n])["__metadata__"]
base = load_file(model + "/model.safetensors")
base = {k[5:] if k.startswith("bert.") else k: v for k, v in base.items()}
L = 4
want = set()
for l in range(L - K, L):
    want |= {k for k in base if k.startswith("encoder.layer.%d." % l)}
if emb:
    want |= {k for k in base if k.startswith("embeddings.") and k != "embeddings.position_ids"}
best, last = load_file(d + "/best.safetensors"), load_file(d + "/last.safetensors")
ft = {k[9:] for k in best if k.startswith("finetune.")}
if ft != want:
    bad.append("finetune tensors: extra %s, missing %s" % (sorted(ft - want)[:4], sorted(want - ft)[:4]))
head = {k for k in best if not k.startswith("finetune.")}
if head != {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}:
    bad.append("head tensors %s" % sorted(head))
for k in sorted(ft & want):
    t = best["finetune." + k]
    if t.dtype != np.float32 or t.shape != base[k].shape:
        bad.append("%s: %s %s, base %s" % (k, t.dtype, t.shape, base[k].shape))
    elif not np.isfinite(t).all() or np.array_equal(t, base[k].astype(np.float32)):
        bad.append("%s: not trained (equal to the base model's, or not finite)" % k)
m = meta(d + "/best.safetensors")
r = json.loads(m["recipe"])
sha = hashlib.sha256(open(model + "/model.safetensors", "rb").read()).hexdigest()
if r.get("recipe_version") != 2 or r.get("finetune") != {"layers": K, "embeddings": emb, "base_model_sha256": sha}:
    bad.append("recipe: version %s finetune %s" % (r.get("recipe_version"), r.get("finetune")))
# last: the same trained tensors, plus the optimiser state of every trained tensor (head included)
trained = {"head." + h for h in head} | {k for k in want}
opt = {k for k in last if k.startswith("optim.")}
if opt != {"optim.m." + k for k in trained} | {"optim.v." + k for k in trained}:
    bad.append("optimiser tensors: %d, expected %d" % (len(opt), 2 * len(trained)))
ml = meta(d + "/last.safetensors")
steps = epochs * math.ceil(28 / 4)  # 28 training rows (40 - 4 val - 8 test), batch 4
if ml.get("optim_step") != str(steps):
    bad.append("optim_step %s, expected %d" % (ml.get("optim_step"), steps))
# it learns: the last epoch's training loss below the first's
tl = json.loads(m["train"])["train_loss"]
if len(tl) != epochs or not tl[-1] < tl[0]:
    bad.append("training loss did not decrease: %s" % tl)
print("%s: %d trained encoder tensors, training loss %s" % (d.split("/")[-1], len(ft), ["%.4f" % x for x in tl]))
for b in bad:
    print("FAIL: %s: %s" % (d, b))
sys.exit(1 if bad else 0)
EOF
}

(train "$TMP/k1" --quiet --finetune 1 "${FT[@]}") >/dev/null 2>"$TMP/k1.err" || { echo "FAIL: --finetune 1: $(cat "$TMP/k1.err")"; exit 1; }
check_ckpt "$TMP/k1" 1 0 4
(train "$TMP/kall" --quiet --finetune all "${FT[@]}") >/dev/null 2>"$TMP/kall.err" || { echo "FAIL: --finetune all: $(cat "$TMP/kall.err")"; exit 1; }
check_ckpt "$TMP/kall" 4 1 4

# `tbert score` (the fine-tuned tensors laid over the base model, src/finetune_load.c, fp32 throughout) gives the
# validation rows the scores training chose the threshold on (oof.safetensors; training's frozen layers are
# cached in bf16): |score - held-out score| <= 2e-3
"$BIN" score --device cpu --head "$TMP/k1" --model "$MODEL" "$DATA" >"$TMP/k1.scores" 2>"$TMP/k1.score.err" ||
    { echo "FAIL: score with the fine-tuned head: $(cat "$TMP/k1.score.err")"; fail=1; }
"$PY" - "$TMP/k1" "$TMP/k1.scores" <<'EOF' || fail=1
import json, sys
from safetensors.numpy import load_file
d, scores = sys.argv[1], sys.argv[2]
sc = [json.loads(l)["score"] for l in open(scores)]
rows = [l.split("\t") for l in open(d + "/split.tsv").read().splitlines()[1:]]
val = [int(r[0]) for r in rows if r[2] == "val"]
oof = load_file(d + "/oof.safetensors")["score"]
diff = max(abs(sc[i] - float(o)) for i, o in zip(val, oof))
print("score vs training's held-out scores: %d rows, max |diff| %.2g" % (len(val), diff))
if len(sc) != 40 or len(val) != len(oof) or len(val) == 0 or not diff <= 2e-3:
    print("FAIL: scores of the fine-tuned head differ from training's held-out scores (max %.3g)" % diff)
    sys.exit(1)
EOF

# the lower layers' output comes from the row store the second time
(train "$TMP/k1again" --finetune 1 "${FT[@]}") >/dev/null 2>"$TMP/k1again.err" || { echo "FAIL: second --finetune 1"; fail=1; }
grep -q "40 documents from the store, 0 encoded" "$TMP/k1again.err" ||
    { echo "FAIL: second run did not reuse the lower-layer cache: $(grep cache "$TMP/k1again.err")"; fail=1; }
cmp -s "$TMP/k1/best.safetensors" "$TMP/k1again/best.safetensors" || { echo "FAIL: a run from the cache differs"; fail=1; }

# kill after epoch 2 (1 thread), resume with 2 threads: the same bytes as an uninterrupted 2-thread run
(train "$TMP/ref" --quiet --finetune 2 "${FT[@]}" --threads 2) >/dev/null 2>"$TMP/ref.err" || { echo "FAIL: reference: $(cat "$TMP/ref.err")"; exit 1; }
(TBERT_TEST_KILL_AT=epoch:2 train "$TMP/res" --quiet --finetune 2 "${FT[@]}" --threads 1) >/dev/null 2>&1
rc=$?
[ $rc -eq 137 ] || { echo "FAIL: expected death by SIGKILL (137) after epoch 2, got $rc"; fail=1; }
ep=$("$PY" -c "
import json,struct
b=open('$TMP/res/last.safetensors','rb').read(); n=struct.unpack('<Q',b[:8])[0]
print(json.loads(b[8:8+n])['__metadata__']['epoch'])" 2>/dev/null || echo '?')
[ "$ep" = 2 ] || { echo "FAIL: the killed run's last.safetensors holds epoch $ep, expected 2"; fail=1; }
(train "$TMP/res" --quiet --finetune 2 "${FT[@]}" --threads 2 --resume) >/dev/null 2>"$TMP/res.err" ||
    { echo "FAIL: resume: $(cat "$TMP/res.err")"; fail=1; }
for f in best.safetensors last.safetensors; do
    cmp -s "$TMP/ref/$f" "$TMP/res/$f" || { echo "FAIL: resumed $f differs from the uninterrupted run"; fail=1; }
done

# --precision bf16 (the trained layers' products in bf16: AMX where the CPU has it, else the float32 fallback): the
# same kill / resume with another thread count gives the same bytes; the tensors differ from the float32 run's (the
# products ran in bf16) but stay close; a resume in another precision is refused; tf32 is refused on the CPU
(train "$TMP/bref" --quiet --finetune 2 "${FT[@]}" --threads 2 --precision bf16) >/dev/null 2>"$TMP/bref.err" ||
    { echo "FAIL: bf16 reference: $(cat "$TMP/bref.err")"; fail=1; }
(TBERT_TEST_KILL_AT=epoch:2 train "$TMP/bres" --quiet --finetune 2 "${FT[@]}" --threads 1 --precision bf16) >/dev/null 2>&1
rc=$?
[ $rc -eq 137 ] || { echo "FAIL: bf16: expected death by SIGKILL (137) after epoch 2, got $rc"; fail=1; }
(train "$TMP/bres" --quiet --finetune 2 "${FT[@]}" --threads 2 --precision bf16 --resume) >/dev/null 2>"$TMP/bres.err" ||
    { echo "FAIL: bf16 resume: $(cat "$TMP/bres.err")"; fail=1; }
for f in best.safetensors last.safetensors; do
    cmp -s "$TMP/bref/$f" "$TMP/bres/$f" || { echo "FAIL: bf16: resumed $f differs from the uninterrupted run"; fail=1; }
done
"$PY" - "$TMP/ref/best.safetensors" "$TMP/bref/best.safetensors" <<'EOF' || fail=1
import sys
import numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
names = sorted(k for k in a if k.startswith("finetune."))
d = np.concatenate([(a[k] - b[k]).ravel() for k in names]).astype(np.float64)
base = np.concatenate([a[k].ravel() for k in names]).astype(np.float64)
r = np.linalg.norm(d) / np.linalg.norm(base)
print("bf16 vs float32 fine-tune: %d tensors, norm ratio of the difference %.2e" % (len(names), r))
if not names or not (0 < r < 2e-2):
    print("FAIL: the bf16 run's trained tensors are not a close, different copy of the float32 run's (%.3g)" % r)
    sys.exit(1)
EOF
cp -r "$TMP/bref" "$TMP/bmis"
if (train "$TMP/bmis" --quiet --finetune 2 "${FT[@]}" --resume) >/dev/null 2>"$TMP/bmis.err"; then
    echo "FAIL: a bf16 run resumed in float32"; fail=1
fi
grep -q "cannot --resume" "$TMP/bmis.err" || { echo "FAIL: precision mismatch message: $(cat "$TMP/bmis.err")"; fail=1; }
if (train "$TMP/btf32" --quiet --finetune 1 --precision tf32) >/dev/null 2>"$TMP/btf32.err"; then
    echo "FAIL: --precision tf32 accepted on the CPU"; fail=1
fi
[ "$(wc -l <"$TMP/btf32.err")" -eq 1 ] && grep -q "needs a CUDA device" "$TMP/btf32.err" ||
    { echo "FAIL: tf32 on the CPU: $(cat "$TMP/btf32.err")"; fail=1; }

cp -r "$TMP/ref" "$TMP/mis"
if (train "$TMP/mis" --quiet --finetune 2 --finetune-epochs 4 --encoder-lr 1e-3 --resume) >/dev/null 2>"$TMP/mis.err"; then
    echo "FAIL: resume with another --encoder-lr accepted"; fail=1
fi
[ "$(wc -l <"$TMP/mis.err")" -eq 1 ] && grep -q "cannot --resume" "$TMP/mis.err" ||
    { echo "FAIL: mismatch message: $(cat "$TMP/mis.err")"; fail=1; }

# cross-fitting fine-tunes the folds: out-of-fold operating point, the kept model's trained tensors in best
(train "$TMP/cv" --quiet --finetune 1 --finetune-epochs 2 --val-fraction 0 --cv 3 --windows 2 --normalize) >/dev/null 2>"$TMP/cv.err" ||
    { echo "FAIL: --finetune with --cv 3: $(cat "$TMP/cv.err")"; fail=1; }
"$PY" - "$TMP/cv" <<'EOF' || fail=1
import json, sys
from safetensors.numpy import load_file
d = sys.argv[1]
m = json.load(open(d + "/metrics.json"))
src = m.get("operating_point", {}).get("source")
ft = [k for k in load_file(d + "/best.safetensors") if k.startswith("finetune.encoder.layer.3.")]
if src != "out-of-fold" or len(ft) != 16:
    print("FAIL: cross-fitted fine-tune: operating point from %s, %d trained tensors in best" % (src, len(ft)))
    sys.exit(1)
EOF

# a cross-fitted fine-tune killed in its final fit (after its epoch 1) resumes to the same files (the folds rerun)
CV=(--quiet --finetune 1 --finetune-epochs 2 --val-fraction 0 --cv 3 --windows 2 --normalize)
(TBERT_TEST_KILL_AT=epoch:1 train "$TMP/cvk" "${CV[@]}") >/dev/null 2>&1
rc=$?
[ $rc -eq 137 ] || { echo "FAIL: cross-fitted run: expected death by SIGKILL (137), got $rc"; fail=1; }
(train "$TMP/cvk" "${CV[@]}" --resume) >/dev/null 2>"$TMP/cvk.err" || { echo "FAIL: cross-fitted resume: $(cat "$TMP/cvk.err")"; fail=1; }
for f in best.safetensors last.safetensors oof.safetensors; do
    cmp -s "$TMP/cv/$f" "$TMP/cvk/$f" || { echo "FAIL: cross-fitted resume: $f differs from the uninterrupted run"; fail=1; }
done

# --export-features (frozen features) does not go with --finetune
(train "$TMP/xf" --quiet --finetune 1 --export-features "$TMP/xf.npz") >/dev/null 2>"$TMP/xf.err"
rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <"$TMP/xf.err")" -eq 1 ] || { echo "FAIL: --export-features with --finetune: exit $rc, '$(cat "$TMP/xf.err")'"; fail=1; }

# --finetune-head refit: the layers train exactly as joint (same bits), then the head path trains a new head on the
# fine-tuned encoder's rows. Reference: that encoder exported (tbert export) and a frozen run on it with the same
# settings -- the head path on the same rows, computed through another route (fp32 layers, no bf16 cache): its head
# must be close to refit's (bf16 rounding of the cached lower layers only) and farther from joint's head.
# --finetune-head first (the default: k1 above): the head path first, then the layers train with that head: other
# encoder bits than joint, and a lower first-epoch training loss (the head starts trained).
(train "$TMP/joint" --quiet --finetune 1 "${FT[@]}" --finetune-head joint) >/dev/null 2>"$TMP/joint.err" ||
    { echo "FAIL: --finetune-head joint: $(cat "$TMP/joint.err")"; fail=1; }
(train "$TMP/refit" --quiet --finetune 1 "${FT[@]}" --finetune-head refit) >/dev/null 2>"$TMP/refit.err" ||
    { echo "FAIL: --finetune-head refit: $(cat "$TMP/refit.err")"; fail=1; }
(train "$TMP/first" --quiet --finetune 1 "${FT[@]}" --finetune-head first) >/dev/null 2>"$TMP/first.err" ||
    { echo "FAIL: --finetune-head first: $(cat "$TMP/first.err")"; fail=1; }
"$BIN" export --head "$TMP/refit" --model "$MODEL" --out "$TMP/refit_model" >/dev/null 2>"$TMP/refit_export.err" ||
    { echo "FAIL: export of the refit head: $(cat "$TMP/refit_export.err")"; fail=1; }
(MODEL=$TMP/refit_model train "$TMP/onft" --quiet) >/dev/null 2>"$TMP/onft.err" ||
    { echo "FAIL: frozen run on the exported encoder: $(cat "$TMP/onft.err")"; fail=1; }
"$PY" - "$TMP" <<'EOF2' || fail=1
import json, struct, sys
import numpy as np
from safetensors.numpy import load_file
t = sys.argv[1]
joint, refit, first, onft, k1 = (load_file(t + "/" + d + "/best.safetensors") for d in ("joint", "refit", "first", "onft", "k1"))
bad = []
if any(not np.array_equal(first[k], k1[k]) for k in k1):
    bad.append("the default run (k1) is not --finetune-head first")
def loss0(d):
    b = open(t + "/" + d + "/best.safetensors", "rb").read(); n = struct.unpack("<Q", b[:8])[0]
    return json.loads(json.loads(b[8:8 + n])["__metadata__"]["train"])["train_loss"][0]
if not loss0("first") < loss0("joint"):
    bad.append("first's first-epoch training loss %.4f is not below joint's %.4f" % (loss0("first"), loss0("joint")))
enc = sorted(k for k in joint if k.startswith("finetune."))
if not enc or any(not np.array_equal(joint[k], refit[k]) for k in enc):
    bad.append("refit's trained layers differ from joint's (the layers' phase must be the same)")
if all(np.array_equal(joint[k], first[k]) for k in enc):
    bad.append("first's trained layers equal joint's (the head phase did not run first)")
head = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
def dist(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in head)
d_refit, d_joint = dist(refit, onft), dist(joint, onft)
print("head vs the head path on the exported encoder: refit %.2g, joint %.2g (max |diff| / max |ref|)" % (d_refit, d_joint))
if not d_refit < 2e-2 or not d_joint > 5 * d_refit:
    bad.append("refit's head is not the head path's on the fine-tuned encoder (refit %.3g, joint %.3g)" % (d_refit, d_joint))
for b in bad:
    print("FAIL: --finetune-head: " + b)
sys.exit(1 if bad else 0)
EOF2

# K deeper than the layers in use
(train "$TMP/k5" --quiet --finetune 5) >/dev/null 2>"$TMP/k5.err"
rc=$?
[ $rc -eq 2 ] && [ "$(wc -l <"$TMP/k5.err")" -eq 1 ] && grep -q -- "--finetune 5" "$TMP/k5.err" ||
    { echo "FAIL: --finetune 5 on 4 layers: exit $rc, '$(cat "$TMP/k5.err")'"; fail=1; }
[ $fail -eq 0 ] && echo ok
exit $fail
