#!/usr/bin/env bash
# The paper-sized comparison on a GPU machine: every experiment variant x seeds, one report.
#   bash bench/gpu_experiment.sh [SEEDS] [DATASET]
# Needs the datasets (GENREC_DATA_MIRROR or a download) and a CUDA build of torch (GENREC_TORCH).
# Writes reports/evaluation-paper-<dataset>.md, metrics/evaluation-paper-<dataset>.json, plots/evaluation-paper-<dataset>/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-3}
DS=${2:-industrial}
[ -x .venv/bin/genrec ] || bash scripts/install.sh
. .venv/bin/activate
S=(--set data.dataset="$DS" --set generator.preset=paper)
genrec "${S[@]}" data fetch "$DS"
genrec "${S[@]}" prepare
genrec "${S[@]}" embed
genrec "${S[@]}" tokenize
genrec "${S[@]}" rebalance --codebook "$DS-$(python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["tokenizer"]["method"])')"
genrec "${S[@]}" retrieval build
genrec "${S[@]}" experiment run --seeds "$SEEDS" --dry-run
genrec "${S[@]}" experiment run --seeds "$SEEDS" --no-progress \
  --metrics-out "metrics/evaluation-paper-$DS.json" --plots-dir "plots/evaluation-paper-$DS" --report "reports/evaluation-paper-$DS.md"
