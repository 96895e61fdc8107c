#!/usr/bin/env bash
# The reference study committed under results/reference/ (configs/sweep/reference.yaml): every
# method at its authors' defaults on Fashion-MNIST with a small MLP, N=4, 3,672 steps, seeds 0-2,
# shared and independent initialisation, WASH at three p with and without lr scaling, the
# communication-efficient methods, independent + rebasin + REPAIR and the equal-FLOPs single
# model: 147 runs, two at a time on 2 CPU cores, then the report. It says how long it took.
#
#   WAB_DATA=../shared/data bash scripts/reference_study.sh              # finish or refresh results/reference
#   WAB_DATA=../shared/data bash scripts/reference_study.sh --retrain DIR
#
# --retrain DIR trains every run again from scratch into DIR (tracked files are not touched),
# writes DIR/report and compares DIR with results/reference run by run (`wab compare`): every
# metric equal, or the differences listed (exit status 1). CPU results are bit-for-bit only on the
# same torch build and thread count (the sweep uses 1 thread per run).
set -euo pipefail
wab="${WAB:-.venv/bin/wab}"
out=results/reference
config=reference
if [ "${1:-}" = "--retrain" ]; then
  out="${2:?usage: reference_study.sh --retrain DIR}"
  if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    echo "$out is not empty: choose a new directory to retrain into" >&2
    exit 2
  fi
  mkdir -p "$out"
  config="$out/reference.yaml"
  sed "s|^out_dir: .*|out_dir: $out|" configs/sweep/reference.yaml > "$config"
fi
start=$(date +%s)
"$wab" sweep "$config" --cluster local
while "$wab" status "$out" | tail -1 | grep -qE "running|queued"; do  # until no run trains or waits
  sleep 30
done
"$wab" report "$out"
echo "reference study: $(( ($(date +%s) - start) / 60 )) minutes"
if [ "$out" != results/reference ]; then
  "$wab" compare results/reference "$out"
fi
