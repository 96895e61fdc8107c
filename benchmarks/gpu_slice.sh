#!/usr/bin/env bash
# The study's GPU slice (issue 27): the papers' own setting, configs/sweep/papers_gpu.yaml
# (ResNet-18 on CIFAR-10, N=4, PAPA's recipe), for independent (PAPA's members), WASH, PAPA and
# DiLoCo, seed 0, EPOCHS epochs, the four runs at once on one GPU (batched members), stopped at
# DEADLINE seconds (default 330) whatever is left. It is the second command after the device check
# (benchmarks/device_check.sh), so that both fit a lent GPU's 15 minutes. CIFAR-10 (127 MB as xz)
# is more than one device call carries beside the tree (64 MiB), so it travels in three parts of
# two batches, one part a call; the machine keeps what a call carried while it stays warm (30 s):
#   bash benchmarks/gpu_slice.sh --pack                   # here: .slice_a .slice_b .slice_c (ignored)
#   run, carry [.whl, .slice_a]:  bash benchmarks/device_check.sh $OUT
#   run, carry [.slice_b]:        true
#   run, carry [.slice_c]:        bash benchmarks/gpu_slice.sh $OUT auto
#   bash benchmarks/gpu_slice.sh --unpack FILES_AT        # here: results/gpu_slice, to commit
#   bash benchmarks/gpu_slice.sh OUT --smoke              # on CPU in about a minute (.ci/run runs it)
# The three calls go in one batch, back to back, so that the machine stays warm between them.
# EPOCHS=auto takes the device check's ResNet-18 N=4 batched rate (R images/s for the population, at
# batch 128; kept on the machine) and trains the epochs that fit 4 minutes with room to spare: the
# four runs share the GPU, at half that rate each for batch 64 and evaluation, so
# floor(0.5 x 240 s x R / (4 x 49,000 images)), at least 1.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
source benchmarks/device_env.sh
PARTS=(".slice_a:data_batch_1 data_batch_2" ".slice_b:data_batch_3 data_batch_4" ".slice_c:data_batch_5 test_batch")

pack() {  # DEST: the three parts of $WAB_DATA/cifar-10-batches-bin, two batches each
  local src="${WAB_DATA:?set WAB_DATA to the folder holding cifar-10-batches-bin}/cifar-10-batches-bin" dest="$1"
  for part in "${PARTS[@]}"; do
    local dir="$dest/${part%%:*}/cifar-10-batches-bin"
    rm -rf "$dir" && mkdir -p "$dir"
    for b in ${part#*:}; do
      local f; f=$(ls "$src/$b.bin"* 2>/dev/null | head -1 || true)
      [ -n "$f" ] || { echo "gpu slice: $src has no $b.bin[.xz]" >&2; exit 2; }
      cp "$f" "$dir/"
    done
  done
}

assemble() {  # FROM INTO: the parts' batches as one cifar-10-batches-bin, or which part is missing
  local from="$1" into="$2/cifar-10-batches-bin"
  mkdir -p "$into"
  for part in "${PARTS[@]}"; do
    for b in ${part#*:}; do
      local f; f=$(ls "$from/${part%%:*}/cifar-10-batches-bin/$b.bin"* 2>/dev/null | head -1 || true)
      [ -n "$f" ] || { echo "gpu slice: ${part%%:*} is missing (it holds ${part#*:}): carry it in a call to this machine while it is warm, see the usage" >&2; exit 2; }
      ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$into/"
    done
  done
}

if [ "${1:-}" = "--pack" ]; then
  pack .
  for part in "${PARTS[@]}"; do
    grep -qx "/${part%%:*}/" "$(git rev-parse --git-path info/exclude)" 2>/dev/null || echo "/${part%%:*}/" >> "$(git rev-parse --git-path info/exclude)"
  done
  du -sh .slice_? && exit 0
fi
if [ "${1:-}" = "--unpack" ]; then
  [ -f "${2:-}/gpu_slice.tar.gz" ] || { echo "usage: gpu_slice.sh --unpack DIR (the folder holding gpu_slice.tar.gz)" >&2; exit 2; }
  mkdir -p results && tar xzf "$2/gpu_slice.tar.gz" -C results && ls results/gpu_slice && exit 0
fi
[ $# -ge 1 ] && [ "${1:0:1}" != "-" ] || { usage; exit 2; }
out="$1"; shift
mkdir -p "$out"
smoke=false epochs=""
for a in "$@"; do
  case "$a" in
    --smoke) smoke=true ;;
    auto) epochs=auto ;;
    *) [[ "$a" =~ ^[1-9][0-9]*$ ]] || { echo "gpu slice: EPOCHS must be auto or a whole number >= 1, got $a" >&2; exit 2; }; epochs="$a" ;;
  esac
done
device_env
wab() { $py -c 'from wab.cli import main; main()' "$@"; }
data="$out/data" runs=results/gpu_slice
if $smoke; then  # the same steps on CPU: packed from WAB_DATA, a small CNN on 256 images, one epoch
  ls "${WAB_DATA:-}/cifar-10-batches-bin/test_batch.bin"* >/dev/null 2>&1 || {
    echo "gpu slice --smoke: skipped, no CIFAR-10 under WAB_DATA=${WAB_DATA:-(unset)}/cifar-10-batches-bin"; exit 0; }
  pack "$out/parts" && assemble "$out/parts" "$data"
  runs="$out/gpu_slice" epochs=1 deadline="${DEADLINE:-300}"
else
  [ -n "$epochs" ] || { usage; exit 2; }
  if [ "$epochs" = auto ]; then
    bench="${WAB_BENCH_CSV:-/tmp/wab-device-check/bench_gpu.csv}"
    epochs=$($py - "$bench" <<'EOF'
import csv, math, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError:
    sys.exit(f"gpu slice: EPOCHS=auto needs the device check's {sys.argv[1]} on this machine: run the device check "
             "first in this lease, or give EPOCHS")
rate = [float(r["img/s population"]) for r in rows if (r["model"], r["N"], r["members"]) == ("resnet18", "4", "batched")]
if not rate:
    sys.exit(f"gpu slice: {sys.argv[1]} has no resnet18 N=4 batched row: give EPOCHS")
print(max(1, math.floor(0.5 * 240 * rate[0] / (4 * 49_000))))
EOF
)
    echo "gpu slice: EPOCHS=auto is $epochs, from $bench"
  fi
  assemble . "$data"
  deadline="${DEADLINE:-330}"
fi
export WAB_DATA="$data" WAB_CACHE="${WAB_CACHE:-/tmp/wab-cache}"
$py - "$runs" "$epochs" "$smoke" > "$out/gpu_slice.yaml" <<'EOF'
import sys, yaml
runs, epochs, smoke = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "true"
spec = yaml.safe_load(open("configs/sweep/papers_gpu.yaml"))
base = [o for o in spec["base"] if not o.startswith("trainer.epochs=")]
base += [f"trainer.epochs={epochs}", "trainer.members=auto"]  # auto: batched on CUDA
if smoke:
    base = [o.replace("model=resnet18", "model=cnn").replace("device=cuda", "device=cpu") for o in base]
    base += ["model.width=8", "data.train_subset=256", "trainer.lmc_points=0"]
spec.update(name="gpu_slice", out_dir=runs, base=base, grid={"seed": [0]})
# the four runs at once on the one GPU (no GPU per job: each sees it), 4 CPU threads each
spec["resources"].update(gpus_per_node=0, cpus_per_task=2 if smoke else 4, array_parallelism=4, timeout_min=15)
print(yaml.safe_dump(spec, sort_keys=False))
EOF
start=$(date +%s)
$py -c 'import sys; from wab.parts.data import load_data; load_data("cifar10")'  # decoded once, cached
wab sweep "$out/gpu_slice.yaml" --cluster local
while wab status "$runs" | tail -1 | grep -qE "running|queued"; do
  if [ $(( $(date +%s) - start )) -gt "$deadline" ]; then
    echo "gpu slice: past its deadline of $deadline s, cancelled; what finished is kept"
    wab cancel "$runs"
    break
  fi
  sleep 10
done
wab status "$runs" | tee "$out/gpu_slice_status.txt"
echo "gpu slice: $(( $(date +%s) - start )) s, $epochs epochs" | tee -a "$out/gpu_slice_status.txt"
if ls "$runs"/*/final.json >/dev/null 2>&1; then
  wab report "$runs" > /dev/null
  awk '/^### /{exit} /^## |^\|/{print}' "$runs/report/summary.md" | cut -c1-400  # the first table, in the output's tail
fi
tar czf "$out/gpu_slice.tar.gz" --exclude='checkpoint*' --exclude=models --exclude='job.*' --exclude=.submitit \
  -C "$(dirname "$runs")" "$(basename "$runs")"
ls -la "$out/gpu_slice.tar.gz"
