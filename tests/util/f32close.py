#!/usr/bin/env python3
"""f32close.py GOT REF WHAT [ATOL RATIO]: two raw little-endian float32 files (e.g. `tbert embed --format f32`
on two devices) agree per element within |got - ref| <= ATOL and as a whole within ||got - ref|| / ||ref|| < RATIO.
Defaults are CONVENTIONS' CUDA fp32 vs CPU tolerances: ATOL 1e-4, RATIO 1e-5. NaN or Inf never passes; the
sizes must match and be non-zero. Prints one line of statistics naming WHAT; exit 1 on failure."""
import sys

import numpy as np


def main():
    if len(sys.argv) not in (4, 6):
        print(__doc__, file=sys.stderr)
        return 2
    got_path, ref_path, what = sys.argv[1:4]
    atol, ratio = (float(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) == 6 else (1e-4, 1e-5)
    got = np.fromfile(got_path, "<f4").astype(np.float64)
    ref = np.fromfile(ref_path, "<f4").astype(np.float64)
    if got.size == 0 or got.size != ref.size:
        print(f"{what}: FAIL sizes {got.size} and {ref.size} floats", file=sys.stderr)
        return 1
    finite = bool(np.all(np.isfinite(got)) and np.all(np.isfinite(ref)))
    diff = np.abs(got - ref)
    den = np.linalg.norm(ref)
    rel = np.linalg.norm(got - ref) / den if den > 0 else np.linalg.norm(got - ref)
    bad = int(np.sum(~(diff <= atol)))
    ok = finite and bad == 0 and rel < ratio
    print(f"{what}: {'ok' if ok else 'FAIL'}: {got.size} floats, max |d| {diff.max():.3g} (atol {atol:g}), "
          f"{bad} outside, ||d||/||ref|| {rel:.3g} (limit {ratio:g}){'' if finite else ', NaN/Inf present'}",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
