#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): on one H100/H200, in under 5 minutes, with the
# packages already there (torch, torchvision, timm...), the CUDA tests, then the checks and the
# benchmark table, all written into OUT as Markdown and CSV. wab's own wheel and the pure-Python
# packages a GPU machine lacks (hydra, omegaconf, submitit) travel in .whl/
# (bash benchmarks/device_check.sh --wheels, here, makes them); nothing is fetched there.
#   bash benchmarks/device_check.sh OUT            # on the GPU machine
#   bash benchmarks/device_check.sh OUT --smoke    # on CPU, under a minute (.ci/run runs it)
#   bash benchmarks/device_check.sh --wheels       # here: build .whl/ to carry
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
source benchmarks/device_env.sh
if [ "${1:-}" = "--wheels" ]; then
  rm -rf .whl && mkdir -p .whl
  # the versions installed here, so that the GPU machine runs what the tests ran against
  pins=$($py -m pip freeze | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime|submitit|hydra-submitit-launcher)==')
  $py -m pip wheel -q --no-deps -w .whl . $pins
  ls -la .whl
  exit 0
fi
[ $# -ge 1 ] && [ "${1:0:1}" != "-" ] || { usage; exit 2; }
out="$1"; shift
mkdir -p "$out"
device_env
if [ "${1:-}" != "--smoke" ]; then
  $py -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_batched.py -m "not slow" 2>&1 | tee "$out/cuda_tests.txt"
fi
$py -m benchmarks.device_check "$out" "$@"
# kept on the machine for the GPU slice's EPOCHS=auto (benchmarks/gpu_slice.sh), as OUT is emptied before each call
if [ "${1:-}" != "--smoke" ]; then mkdir -p /tmp/wab-device-check && cp "$out/bench_gpu.csv" /tmp/wab-device-check/; fi
