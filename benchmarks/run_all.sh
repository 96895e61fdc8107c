#!/usr/bin/env bash
# Every benchmark in turn, each printing its figures (run on an otherwise idle machine).
#   WAB_DATA=../shared/data bash benchmarks/run_all.sh 2>&1 | tee /tmp/benchmarks.txt
set -euo pipefail
py="${PYTHON:-.venv/bin/python}"
for cmd in "-m benchmarks.bench_trainer" "-m benchmarks.bench_optimizer" "-m benchmarks.bench_layout" \
           "-m benchmarks.bench_methods" "-m benchmarks.bench_data" "-m benchmarks.bench_epoch" \
           "-m benchmarks.bench_memory"; do
  echo "## $py $cmd  ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
  $py $cmd
  echo
done
echo "## OMP_NUM_THREADS=1 $py -m torch.distributed.run --nproc_per_node=2 -m benchmarks.bench_distributed"
OMP_NUM_THREADS=1 $py -m torch.distributed.run --nproc_per_node=2 -m benchmarks.bench_distributed
echo
echo "## $py -m benchmarks.bench_scaling"
$py -m benchmarks.bench_scaling
echo
if $py -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "## $py -m benchmarks.bench_gpu  ($(date -u +%Y-%m-%dT%H:%MZ))"
  $py -m benchmarks.bench_gpu
  echo
fi
