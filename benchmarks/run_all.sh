#!/usr/bin/env bash
# Reproduce docs/benchmarks.md: the three benchmarks in one go, then the issue-6 target check.
#   benchmarks/run_all.sh                      # CPU, 1 thread, the sizes of docs/benchmarks.md
#   DEVICE=cuda THREADS= benchmarks/run_all.sh # a GPU machine (fp32 and bf16 both run where supported)
#   FULL=1 benchmarks/run_all.sh               # also the softmax encoder at 2048^2 (hours on a 2-core CPU)
# Results (JSON, markdown, PNG) go to $OUT (default benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS-1}
REPEATS=${REPEATS:-5}
mkdir -p "$OUT"
common=(--device "$DEVICE" --repeats "$REPEATS" --json)
[[ -n "$THREADS" ]] && common+=(--threads "$THREADS")

cbsa-dense benchmark attention --tokens 1024 4096 16384 --dim 384 --heads 6 --batch 1 \
    "${common[@]}" --out-dir "$OUT/attention" > "$OUT/attention.stdout.json"

# Encoder: both attentions at 512^2 and 1024^2; CBSA alone at 2048^2 unless FULL=1 (softmax there
# needs ~16k-token quadratic attention in 12 blocks: minutes per step on a small CPU).
cbsa-dense benchmark encoder --image-size 512 1024 --attentions cbsa softmax --dtype float32 \
    "${common[@]}" --repeats 3 --out-dir "$OUT/encoder" > "$OUT/encoder.stdout.json"
if [[ -n "${FULL:-}" ]]; then
    cbsa-dense benchmark encoder --image-size 2048 --attentions cbsa softmax --dtype float32 \
        "${common[@]}" --repeats 1 --out-dir "$OUT/encoder_2048" > "$OUT/encoder_2048.stdout.json"
else
    cbsa-dense benchmark encoder --image-size 2048 --attentions cbsa --dtype float32 \
        "${common[@]}" --repeats 1 --out-dir "$OUT/encoder_2048" > "$OUT/encoder_2048.stdout.json"
fi

for cfg in demo_seg.yaml demo_det.yaml; do
    name=$(basename "$cfg" .yaml)
    cbsa-dense benchmark train --config "$cfg" --steps 20 --warmup-steps 3 --json \
        ${THREADS:+--threads "$THREADS"} > "$OUT/train_$name.json"
done

cbsa-dense benchmark targets --attention "$OUT/attention/attention.json" --encoder "$OUT/encoder/encoder.json" \
    | tee "$OUT/targets.md"
