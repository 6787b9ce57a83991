#!/usr/bin/env bash
# The main job on a fresh machine (README's first command): Debian packages, build, the default model
# (MiniLM from PyPI), the SMS Spam Collection, train a head, evaluate it on the held-out split, and print
# the metrics and the report's path. Output folder: $TBERT_RUN_DIR (default runs/sms).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
run_dir=${TBERT_RUN_DIR:-runs/sms}

bash scripts/install-deps.sh
py=$(bash scripts/python-env.sh | tail -n1)
TBERT_PIP_PYTHON="$py" bash models/fetch.sh minilm >/dev/null
command -v nvcc >/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"; }
bin="$(bash scripts/build.sh auto | tail -n1)/tbert"
sms=$(bash data/fetch.sh sms | tail -n1)

echo "== training on $sms (80/20 stratified split, seed 42) =="
"$bin" train --data "$sms" --out "$run_dir" --test-fraction 0.2 --seed 42
# split.tsv (row, line, split, label) records which corpus lines train held out for testing
awk -F'\t' 'NR == FNR { if ($3 == "test") keep[$2] = 1; next } (FNR in keep)' "$run_dir/split.tsv" "$sms" > "$run_dir/test.tsv"
echo "== evaluating $run_dir on the held-out test split ($(wc -l < "$run_dir/test.tsv") messages) =="
"$bin" eval --head "$run_dir" --data "$run_dir/test.tsv" --input-format tsv --header no
echo "report: $(cd "$run_dir" && pwd)/report.html"
