#!/usr/bin/env bash
# The one command a lent GPU machine runs (docs/gpu_run.md): install the carried wheels, train cadc-tiny
# inside a wall-clock budget, and leave the weights in pieces, config.yaml, run.json and train.log in $OUT.
#
#   bash tools/gpu_train_tiny.sh [--budget-s 510] [--init-bundle gateway/bundles/cadc-tiny] [gpu_train_tiny.py options]
#
# The budget counts from this script's start (the wheel install included): tools/gpu_train_tiny.py gets the
# deadline and plans its stages to end 30 s before it.  As a backstop, `timeout` sends SIGINT 45 s after the
# deadline (the trainer then exports what it has and exits) and SIGKILL 20 s later: with the default budget
# everything ends by 575 s, inside the device's 600 s limit per command.
set -u
start=$(date +%s)
budget=510
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ "${args[i]}" == --budget-s && $((i + 1)) -lt ${#args[@]} ]]; then budget=${args[i + 1]%.*}; fi
done
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}

# The GPU image has torch but not diffusers, constriction or crcmod: tools/pack_gpu_payload.py put cp312 wheels
# into .gpu/wheels (the device README's recipe; --no-deps: everything else they need is in the image).  Where
# they import already (a dry run of this wrapper on a development machine) nothing is installed.
if ! "$py" -c "import diffusers, constriction, crcmod" 2> /dev/null && compgen -G ".gpu/wheels/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    || { echo "gpu_train_tiny.sh: installing .gpu/wheels failed" >&2; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'

set -o pipefail
timeout -s INT -k 20 $((budget + 45)) "$py" tools/gpu_train_tiny.py --deadline $((start + budget)) --out "$out" "$@" 2>&1 \
  | tee "$out/train.log"
