#!/usr/bin/env python3
"""The device's measured ceilings, in the same run as the encoder benchmark: a large device-to-device copy
(bytes read + written per second) and large cuBLAS matrix products (fp32, tf32, bf16 TFLOP/s) on random data,
timed with CUDA events (median of 10 after 3 warm-ups). Prints one JSON line."""
import json
import statistics
import sys

import torch


def timed(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return statistics.median(ts)


def main():
    if not torch.cuda.is_available():
        sys.exit("gpu_peaks.py: no CUDA device visible to torch")
    out = {"device": torch.cuda.get_device_name()}
    n = 1 << 29  # 2 GiB of float32
    src = torch.rand(n, device="cuda")
    dst = torch.empty_like(src)
    s = timed(lambda: dst.copy_(src))
    out["copy_gb_per_s"] = round(2 * n * 4 / s / 1e9, 1)
    del src, dst
    N = 8192
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(N, N, device="cuda", dtype=dtype)
        b = torch.randn(N, N, device="cuda", dtype=dtype)
        s = timed(lambda: a @ b)
        out[f"gemm_{name}_tflops"] = round(2 * N ** 3 / s / 1e12, 1)
    torch.backends.cuda.matmul.allow_tf32 = False
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
