#!/usr/bin/env bash
# The checks that need a GPU, in one script (about 12 minutes on one H100/H200), run from the
# repository root inside the project's environment:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # default: gpu_check_out/
#
#   1. the GPU, driver, torch, CUDA, cuDNN and NCCL versions
#   2. the tests that need CUDA (pytest -m cuda: the sync-free step under
#      torch.cuda.set_sync_debug_mode("error"), ...)
#   3. bench_train --device cuda: compute mode at batch 64 and 512, fp32 (TF32 convolutions, torch's
#      default) and bf16, compiled on and off; host mode (tiny nets: the fixed cost per step)
#   4. a 60-second faces64 training through `accelerate launch --config_file launch/gpu1.yaml`,
#      stopped by SIGTERM (checkpoint + status "stopped"), its img/s from stats.jsonl
#   5. the time of a 10,000-sample FID of that checkpoint
#
# and writes OUT_DIR/results.md (one table) beside each step's own output. A failing step is
# recorded in the table and the script goes on; it exits 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
SHARED=../shared/data
INCEPTION=$SHARED/fid_inception/default_1.pt
failed=0
rows=()
row() { rows+=("| $1 | $2 |"); echo "gpu_check: $1: $2"; }
step_failed() { failed=1; row "$1" "FAILED (see $2)"; }

# 1. versions
python - >"$OUT/versions.txt" 2>&1 <<'EOF'
import torch
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("nccl", ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-")
print("capability", torch.cuda.get_device_capability() if torch.cuda.is_available() else "-")
EOF
cat "$OUT/versions.txt"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible; nothing to check" >&2
  exit 2
fi
row "versions" "$(tr '\n' ' ' <"$OUT/versions.txt")"

# 2. CUDA tests
if timeout 120 python -m pytest -q -m cuda tests/ -p no:cacheprovider >"$OUT/pytest_cuda.txt" 2>&1; then
  row "pytest -m cuda" "$(tail -n 1 "$OUT/pytest_cuda.txt")"
else
  step_failed "pytest -m cuda" "$OUT/pytest_cuda.txt"
fi

# 3. bench_train on the GPU
if timeout 600 python -m benchmarks.bench_train --device cuda --quick --batches 64,512 --compile default \
    --json "$OUT/bench_train.json" >"$OUT/bench_train.txt" 2>&1 || [ -s "$OUT/bench_train.json" ]; then
  row "bench_train" "see the tables in $OUT/bench_train.txt"
else
  step_failed "bench_train" "$OUT/bench_train.txt"
fi

# 4. 60 s of faces64 on one GPU
DATA=$OUT/faces64_shards
if [ -f "$SHARED/faces/fairface_val_1-3000.tar" ]; then
  python -m dcgan_dist.prepare "$SHARED/faces/fairface_val_1-3000.tar" --out "$DATA" --resolution 64 --no-labels \
    >"$OUT/prepare.txt" 2>&1
else
  python -m dcgan_dist.prepare digits --out "$DATA" --resolution 64 --channels 3 >"$OUT/prepare.txt" 2>&1
fi
RUN=$OUT/faces64_run
accelerate launch --config_file launch/gpu1.yaml -m dcgan_dist.train configs/faces64.yaml \
  data.shards="$DATA" run.dir="$RUN" resume=none train.kimg=100000 train.tick_kimg=10 >"$OUT/train.txt" 2>&1 &
launcher=$!
sleep 60
kill -TERM "$launcher" 2>/dev/null
timeout 120 tail --pid="$launcher" -f /dev/null
if [ -s "$RUN/stats.jsonl" ] && grep -q '"stopped"' "$RUN/status.json" 2>/dev/null; then
  ips=$(python -c "import json,sys,statistics; r=[json.loads(l) for l in open('$RUN/stats.jsonl')][1:] or [json.loads(l) for l in open('$RUN/stats.jsonl')]; print(round(statistics.median(x['Speed/img_per_sec'] for x in r)))")
  kimg=$(python -c "import json; print(json.load(open('$RUN/status.json'))['kimg'])")
  row "faces64, 60 s, launch/gpu1.yaml (bf16)" "$ips img/s median per tick; stopped by SIGTERM at kimg $kimg with a checkpoint"
else
  step_failed "faces64 60 s training" "$OUT/train.txt"
fi

# 5. FID from 10,000 samples
if [ -f "$INCEPTION" ] && [ -d "$RUN/checkpoints" ]; then
  t0=$(date +%s.%N)
  if timeout 240 python -m dcgan_dist.evaluate "$RUN" --num 10000 --inception "$INCEPTION" --no-progress \
      --out "$OUT/fid.json" >"$OUT/fid.txt" 2>&1; then
    t1=$(date +%s.%N)
    fid=$(python -c "import json; print(round(json.load(open('$OUT/fid.json'))['fid'], 2))")
    row "FID, 10,000 samples (incl. reference statistics of the set)" "$(python -c "print(round($t1 - $t0, 1))") s (FID $fid)"
  else
    step_failed "FID 10k" "$OUT/fid.txt"
  fi
else
  row "FID, 10,000 samples" "skipped: no $INCEPTION or no checkpoint"
fi

{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| check | result |"
  echo "|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  [ -f "$OUT/bench_train.txt" ] && sed -n '/^bench_train:/,$p' "$OUT/bench_train.txt"
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $failed
