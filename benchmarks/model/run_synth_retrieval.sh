#!/usr/bin/env bash
# Video-retrieval quality of the default dual-encoder engine on the synthetic benchmark:
# generate the benchmark, fit the engine's temporal pooler + projector on the train split (model
# selection on val), index the test split's videos, report R@1/5/10 and MRR vs chance on the test
# queries (overall and split by held-out colour/object combinations).
set -euo pipefail
OUT=${1:-runs}
THREADS=${2:-2}  # torch CPU threads
vsr data synth "$OUT/synth-medium" --preset medium --seed 0
vsr engine fit --benchmark "$OUT/synth-medium" --config benchmarks/model/engine_synth.yaml \
  --out "$OUT/engine-synth" --frame-cache "$OUT/frame-cache" --threads "$THREADS"
vsr corpus build --engine "$OUT/engine-synth/engine" --videos "$OUT/synth-medium/videos.jsonl" --split test \
  --out "$OUT/index-synth-test" --frame-cache "$OUT/frame-cache" --threads "$THREADS"
vsr engine eval --engine "$OUT/index-synth-test/engine" \
  --annotations "$OUT/synth-medium/annotations/synth_test.jsonl" --group-by held_out_combo \
  --out benchmarks/model/synth_retrieval.json
