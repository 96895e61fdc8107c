# Sourced by the device machine's scripts (device_check.sh, gpu_slice.sh): $py, the Python to use,
# and device_env, which makes wab importable there. A GPU machine has torch, torchvision and timm
# but not wab or hydra/omegaconf/submitit: they come from the wheels in .whl/ (`bash
# benchmarks/device_check.sh --wheels`, here), installed once per machine into /tmp/wab-site (a
# later call on the same machine finds them there); nothing is fetched there.
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
device_env() {
  local site=/tmp/wab-site
  if ! $py -c 'import hydra, submitit, wab.methods' 2>/dev/null; then
    if ! PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" $py -c 'import hydra, submitit, wab.methods' 2>/dev/null; then
      [ -d .whl ] || { echo "wab or hydra/submitit is not importable and there is no .whl/ (make it here with: bash benchmarks/device_check.sh --wheels)" >&2; exit 2; }
      $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # the tree last (benchmarks/, tests/): wab itself comes from its install, where methods/ is wab.methods
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
}
