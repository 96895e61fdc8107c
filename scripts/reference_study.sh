#!/usr/bin/env bash
# The reference study committed under results/reference/ (configs/sweep/reference.yaml): every
# method at its authors' defaults on Fashion-MNIST with a small MLP, N=4, 3,672 steps, seeds 0-2,
# shared and independent initialisation, WASH at three p with and without lr scaling. 96 runs,
# about an hour on 2 CPU cores (two runs at a time), then the report.
#   WAB_DATA=../shared/data bash scripts/reference_study.sh
set -euo pipefail
wab="${WAB:-.venv/bin/wab}"
out=results/reference
"$wab" sweep reference --cluster local
while "$wab" status "$out" | tail -1 | grep -qE "running|queued"; do  # until no run trains or waits
  sleep 30
done
"$wab" report "$out"
