#!/usr/bin/env bash
# CRAB on Industrial (issue 14): TIGER vs TIGER+CRAB (post-hoc LoRA fine-tune, Eq. 9 alignment) and its
# ablations (w/o alignment loss, split level 1 only, full fine-tune instead of LoRA), SEEDS seeds, the cpu preset.
#   bash bench/crab_experiment.sh [SEEDS] [REGISTRY]
# Needs the pipeline's artifacts up to `rebalance` in REGISTRY (e.g. after `dvc repro`); finished runs are
# skipped (rankings carry a run_key), TIGER runs are reused. Writes bench/results/crab_industrial/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-3}
REG=${2:-artifacts}
OUT=bench/results/crab_industrial
mkdir -p "$OUT"
G=(.venv/bin/genrec --registry "$REG")
V=(tiger tiger-crab tiger-crab-noalign tiger-crab-l1 tiger-crab-full)
"${G[@]}" experiment run --seeds "$SEEDS" --variants "${V[@]}" --no-progress --no-report
# per-level token Gini / top share before and after, for both rebalanced codebooks the variants used
.venv/bin/python - "$REG" "$OUT/codebook_gini.json" <<'PY'
import json, sys
from components.registry import Registry
reg, out = Registry(sys.argv[1]), {}
for name in ("industrial-crab", "industrial-crab-levels1"):
    art = reg.load(f"codebook/{name}@latest")
    st = art.load_json("stats.json")
    out[art.ref] = {f"level_{r['level']}": {"split": r["split"], "n_new_tokens": r["n_new_tokens"],
                    **{f"{k}_{w}": round(r[w][k], 4) for w in ("before", "after") for k in ("gini", "top_share", "vocab")}}
                    for r in st["levels"]}
json.dump(out, open(out_path := sys.argv[2], "w"), indent=1)
print(json.dumps(out, indent=1))
PY
"${G[@]}" experiment report --seeds "$SEEDS" --variants sasrec "${V[@]}" \
  --metrics-out "$OUT/evaluation.json" --plots-dir "$OUT" --report "$OUT/evaluation.md"
