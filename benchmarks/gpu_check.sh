#!/usr/bin/env bash
# GPU verification for a session that is lent a GPU machine (CONVENTIONS.md "A lent GPU"; docs/cuda.md).
# One step per device call (each well under the 10-minute limit), all on one warm machine:
#   benchmarks/gpu_check.sh build            unpack the carried .debs, build (CUDA, sm_90), ctest, GPU parity tests
#                                            (test_cuda_parity, test_cuda_head, test_cuda_head_sparse,
#                                            test_cuda_backward, test_cuda_finetune)
#   benchmarks/gpu_check.sh sanitize         compute-sanitizer memcheck/racecheck/initcheck/synccheck, small shapes
#   benchmarks/gpu_check.sh bench [tiny|minilm|all]
#                                            tbert bench --device cuda vs PyTorch eager and torch.compile, random
#                                            weights, T=128, batch 256..16384, fp32 and bf16, plus the device's
#                                            measured copy bandwidth and GEMM peaks, all in the same run
# Before the first call, on the Debian machine: scripts/gpu-deps.sh (fills the git-ignored .gpu-deps/), then
#   run(command="benchmarks/gpu_check.sh build", carry=[".gpu-deps"])
# Full logs go to $OUT (the device tool's folder; /tmp/tbert-gpu-check elsewhere); a short table is printed last.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-/tmp/tbert-gpu-check}"
prefix=/tmp/tbert-gpu-deps
build="$root/build-gpu"
lib="$prefix/usr/lib/x86_64-linux-gnu"
mkdir -p "$out"
step="${1:-}"
cd "$root" || exit 2

die() { echo "gpu_check: $*" >&2; exit 2; }
say() { echo "gpu_check: $*" >&2; }

device_info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv >"$out/device.txt" 2>&1 \
        || die "nvidia-smi failed: no GPU here?"
    date -u >>"$out/device.txt"
    nvcc --version | tail -1 >>"$out/device.txt" 2>&1
    cat "$out/device.txt" >&2
}

# Unpacks .gpu-deps/*.deb into $prefix (never into /) and writes a pkg-config wrapper that sees only it.
unpack_deps() {
    if [ ! -x "$prefix/usr/bin/pkgconf" ]; then
        ls "$root"/.gpu-deps/*.deb >/dev/null 2>&1 || die "no .gpu-deps/*.deb: run scripts/gpu-deps.sh on the Debian machine and carry .gpu-deps"
        mkdir -p "$prefix"
        for f in "$root"/.gpu-deps/*.deb; do dpkg -x "$f" "$prefix" || die "dpkg -x $f failed"; done
    fi
    cat >"$prefix/pkg-config" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$lib" PKG_CONFIG_LIBDIR="$lib/openblas-pthread/pkgconfig:$lib/pkgconfig:$prefix/usr/share/pkgconfig" \
PKG_CONFIG_SYSROOT_DIR="$prefix" exec "$prefix/usr/bin/pkgconf" "\$@"
EOF
    chmod +x "$prefix/pkg-config"
}

# The GPU image's gcc may be newer than CI's: its new diagnostics (string truncation heuristics) must not cost a
# device call. CI on Debian stays the lint gate; GPU_CHECK_CFLAGS="" restores plain -Werror here.
lint_relief="-Wno-error=format-truncation -Wno-error=stringop-truncation -Wno-error=format-overflow -Wno-error=stringop-overflow"

configure_and_build() {
    unpack_deps
    local gen=() rp="$lib:$lib/openblas-pthread"
    command -v ninja >/dev/null && gen=(-G Ninja)
    # DT_RPATH (not RUNPATH) so that the libraries' own dependencies resolve in the prefix too, without an
    # LD_LIBRARY_PATH that would also reach cmake, python and torch.
    [ -f "$build/CMakeCache.txt" ] && gen=() # the generator of an existing build folder stays
    cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTBERT_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90-real -DPKG_CONFIG_EXECUTABLE="$prefix/pkg-config" -DTBERT_PYTHON=python3 \
        -DCMAKE_C_FLAGS="${GPU_CHECK_CFLAGS-$lint_relief}" \
        -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags -Wl,-rpath,$rp -Wl,-rpath-link,$rp" \
        >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log" >&2; die "configure failed (configure.log)"; }
    cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -E "error|Error" "$out/build.log" | head -30 >&2; die "build failed (build.log)"; }
    say "built $build"
}

# "what: n elements, k outside tolerance, ||got-ref||/||ref|| = r" lines -> worst ratio per group
error_table() {
    python3 - "$@" <<'EOF'
import re, sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        m = re.match(r"(.*?): (\d+) elements, (\d+) outside tolerance, \|\|got-ref\|\|/\|\|ref\|\| = (\S+)", line)
        if not m:
            continue
        what = re.sub(r" (B|T|rows|in|out|cols|heads|d|H|n|out_T|mode|kind|batch|nnz|dd|sd|hidden|C|binary|p|weighted|max_n|N|Lmax|V)=\S+", "", m.group(1)).strip()
        r = float(m.group(4)); bad = int(m.group(3))
        worst, nbad, cnt = rows.get(what, (0.0, 0, 0))
        rows[what] = (max(worst, r), nbad + bad, cnt + 1)
print(f"{'comparison':58s} {'cases':>5s} {'worst ||d||/||ref||':>19s} {'elems out':>9s}")
for what in sorted(rows):
    worst, nbad, cnt = rows[what]
    print(f"{what[:58]:58s} {cnt:5d} {worst:19.3g} {nbad:9d}")
EOF
}

step_build() {
    SECONDS=0
    device_info
    configure_and_build
    local t0=$SECONDS rc=0
    # the GPU tests first: they are what this machine is for
    (cd "$root/tests" && env TBERT_SOURCE_DIR="$root" TBERT_TESTS_DIR="$root/tests" timeout 240 "$build/tests/test_cuda_parity") \
        >"$out/parity.log" 2>&1
    local prc=$?
    (cd "$root/tests" && timeout 90 "$build/tests/test_cuda_head") >"$out/head.log" 2>&1
    local hrc=$?
    (cd "$root/tests" && timeout 90 "$build/tests/test_cuda_head_sparse") >"$out/head_sparse.log" 2>&1
    local src=$?
    # the backward kernels (issue 15) against their CPU twins
    (cd "$root/tests" && timeout 90 "$build/tests/test_cuda_backward") >"$out/backward.log" 2>&1
    local brc=$?
    # the trainable stack on the device against the CPU stack (issue 15, --finetune K --device cuda)
    (cd "$root/tests" && timeout 90 "$build/tests/test_cuda_finetune") >"$out/finetune.log" 2>&1
    local frc=$?
    local tgpu=$((SECONDS - t0)) left=$((560 - SECONDS))
    # then the rest of the suite in the time left (CPU tests; corpus- and model-dependent ones skip: ../shared
    # and model weights do not travel)
    if [ "$left" -gt 30 ]; then
        (cd "$build" && timeout "$left" ctest -j "$(nproc)" --timeout 240 --output-on-failure \
            -E '^test_cuda_(parity|head|head_sparse|backward|finetune)$' >"$out/ctest.log" 2>&1) || rc=1
    else
        echo "no time left for ctest" >"$out/ctest.log"
        rc=2
    fi
    echo "== ctest (all other tests; full log ctest.log)"
    grep -E "tests passed|tests failed|\*\*\*Failed|Not Run|Timeout|no time left" "$out/ctest.log" | tail -15
    echo "== worst errors per comparison (parity.log, head.log, head_sparse.log, backward.log)"
    error_table "$out/parity.log" "$out/head.log" "$out/head_sparse.log" "$out/backward.log"
    echo "== summary (GPU tests ${tgpu} s, whole step ${SECONDS} s; device: $(head -2 "$out/device.txt" | tail -1))"
    printf '%-22s %s\n' "test_cuda_parity" "$([ $prc = 0 ] && echo PASS || echo "FAIL (rc $prc)")" \
        "test_cuda_head" "$([ $hrc = 0 ] && echo PASS || echo "FAIL (rc $hrc)")" \
        "test_cuda_head_sparse" "$([ $src = 0 ] && echo PASS || echo "FAIL (rc $src)")" \
        "test_cuda_backward" "$([ $brc = 0 ] && echo PASS || echo "FAIL (rc $brc)")" \
        "test_cuda_finetune" "$([ $frc = 0 ] && echo PASS || echo "FAIL (rc $frc)")" \
        "ctest (others)" "$([ $rc = 0 ] && echo PASS || echo "FAIL or incomplete")"
    [ $rc = 0 ] && [ $prc = 0 ] && [ $hrc = 0 ] && [ $src = 0 ] && [ $brc = 0 ] && [ $frc = 0 ]
}

step_sanitize() {
    device_info
    [ -x "$build/tests/test_cuda_parity" ] || configure_and_build
    command -v compute-sanitizer >/dev/null || die "compute-sanitizer not found"
    local results=()
    run_tool() { # tool test
        local tool=$1 t=$2 log="$out/sanitize-$1-$2.log"
        (cd "$root/tests" && TBERT_CUDA_PARITY_SMALL=1 timeout 80 compute-sanitizer --tool "$tool" --error-exitcode 99 \
            $([ "$tool" = memcheck ] && echo --leak-check full) "$build/tests/$t") >"$log" 2>&1
        local rc=$?
        local summary
        summary="$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" "$log" | tail -1)"
        [ -n "$summary" ] || summary="$(tail -1 "$log")"
        results+=("$(printf '%-10s %-18s rc=%-3s %s' "$tool" "$t" "$rc" "$summary")")
    }
    for tool in memcheck racecheck initcheck synccheck; do run_tool "$tool" test_cuda_parity; done
    run_tool memcheck test_cuda_head
    run_tool racecheck test_cuda_head
    run_tool memcheck test_cuda_head_sparse
    run_tool racecheck test_cuda_head_sparse
    run_tool memcheck test_cuda_backward
    run_tool racecheck test_cuda_backward
    run_tool memcheck test_cuda_finetune
    echo "== compute-sanitizer (small shapes; logs sanitize-*.log)"
    printf '%s\n' "${results[@]}"
}

write_configs() {
    local d=$1
    mkdir -p "$d"
    cat >"$d/tiny.json" <<'EOF'
{"model_type": "bert", "hidden_act": "gelu", "vocab_size": 30522, "hidden_size": 128, "num_hidden_layers": 2,
 "num_attention_heads": 2, "intermediate_size": 512, "max_position_embeddings": 512, "type_vocab_size": 2,
 "layer_norm_eps": 1e-12, "pad_token_id": 0}
EOF
    cat >"$d/minilm.json" <<'EOF'
{"model_type": "bert", "hidden_act": "gelu", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
 "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512, "type_vocab_size": 2,
 "layer_norm_eps": 1e-12, "pad_token_id": 0}
EOF
}

step_bench() {
    local which="${1:-all}" configs=()
    case "$which" in
    tiny) configs=(tiny) ;; minilm) configs=(minilm) ;; all) configs=(tiny minilm) ;;
    *) die "bench: expected tiny, minilm or all, got '$which'" ;;
    esac
    device_info
    [ -x "$build/tbert" ] || configure_and_build
    local cfgdir=/tmp/tbert-bench-configs jl="$out/bench.jsonl" failed=0
    write_configs "$cfgdir"
    : >"$jl"
    python3 "$root/benchmarks/peers/gpu_peaks.py" >>"$jl" 2>>"$out/bench.log" || { say "gpu_peaks.py FAILED"; failed=1; }
    local batches=(256 1024 4096 16384)
    for c in "${configs[@]}"; do
        for p in fp32 bf16; do
            for b in "${batches[@]}"; do
                if ! timeout 120 "$build/tbert" bench --random-weights "$cfgdir/$c.json" --device cuda --precision "$p" \
                    --batch "$b" --seq-len 128 --iters 5 --warmup 1 --json 2>>"$out/bench.log" |
                    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['config']='$c'; print(json.dumps(d))" >>"$jl"; then
                    say "tbert bench $c $p batch $b FAILED (bench.log)"; failed=1
                fi
            done
            # the attention implementations end to end (same bench, batch 4096): v2 ships, v1 and unfused for scale
            for att in fused1 unfused; do
                TBERT_CUDA_ATTENTION=$att timeout 120 "$build/tbert" bench --random-weights "$cfgdir/$c.json" --device cuda \
                    --precision "$p" --batch 4096 --seq-len 128 --iters 5 --warmup 1 --json 2>>"$out/bench.log" |
                    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['config']='$c'; d['engine']='tbert-$att'; print(json.dumps(d))" \
                        >>"$jl" || { say "tbert bench $c $p attention $att FAILED (bench.log)"; failed=1; }
            done
            for mode in eager compile; do
                if ! PYTHONUNBUFFERED=1 timeout 200 python3 "$root/benchmarks/peers/torch_encoder.py" --config "$cfgdir/$c.json" \
                    --precision "$p" --mode "$mode" --batch "${batches[@]}" --seq-len 128 --iters 5 --warmup 2 2>>"$out/bench.log" |
                    python3 -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line); d['config'] = '$c'; print(json.dumps(d))" >>"$jl"; then
                    say "torch $mode $c $p FAILED (bench.log)"; failed=1
                fi
            done
        done
    done
    echo "== benchmark (random weights, T=128, every sequence 128 real tokens; full data bench.jsonl)"
    python3 - "$jl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak = next((r for r in rows if "copy_gb_per_s" in r), None)
tb = {(r["config"], r["precision"], r["batch"]): r for r in rows if r.get("engine") == "tbert"}
pe = {(r["engine"], r["config"], r["precision"], r["batch"]): r for r in rows if str(r.get("engine", "")).startswith("torch-")}
def f(x):
    return f"{x:12,.0f}" if x is not None else f"{'not run':>12s}"
print(f"{'config':7s} {'prec':5s} {'batch':>6s} {'tbert seq/s':>12s} {'torch eager':>12s} {'torch.compile':>13s} {'x eager':>8s} {'x compile':>9s} {'tbert TFLOP/s':>13s}")
for (c, p, b), r in sorted(tb.items(), key=lambda k: (k[0][0], k[0][1], k[0][2])):
    t = r["sequences_per_s"]
    e = pe.get(("torch-eager", c, p, b), {}).get("sequences_per_s")
    k = pe.get(("torch-compile", c, p, b), {}).get("sequences_per_s")
    xe = f"{t / e:8.2f}" if e else f"{'-':>8s}"
    xk = f"{t / k:9.2f}" if k else f"{'-':>9s}"
    print(f"{c:7s} {p:5s} {b:6d} {f(t)} {f(e)} {f(k):>13s} {xe} {xk} {r['gflops_per_s'] / 1e3:13.1f}")
alt = [r for r in rows if str(r.get("engine", "")).startswith("tbert-")]
if alt:
    print("attention implementations, batch 4096 (sequences/s): " + "; ".join(
        f"{r['config']} {r['precision']} {r['engine'][6:]} {r['sequences_per_s']:,.0f}"
        f" (v2 {tb[(r['config'], r['precision'], 4096)]['sequences_per_s']:,.0f})"
        if (r['config'], r['precision'], 4096) in tb else f"{r['config']} {r['precision']} {r['engine'][6:]} {r['sequences_per_s']:,.0f}"
        for r in alt))
if peak:
    print(f"device {peak['device']}: copy {peak['copy_gb_per_s']} GB/s (read+write), GEMM 8192^3: fp32 {peak['gemm_fp32_tflops']}, "
          f"tf32 {peak['gemm_tf32_tflops']}, bf16 {peak['gemm_bf16_tflops']} TFLOP/s")
else:
    print("device peaks: not measured (gpu_peaks.py failed)")
EOF
    return $failed
}

# (sourcing the file only defines the functions: the Debian machine checks configure_and_build that way)
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "$step" in
    build) step_build ;;
    sanitize) step_sanitize ;;
    bench) shift; step_bench "${1:-all}" ;;
    *) echo "usage: benchmarks/gpu_check.sh build | sanitize | bench [tiny|minilm|all]" >&2; exit 2 ;;
    esac
fi
