#!/usr/bin/env bash
# The GPU suite inside a wall-clock limit, on a GPU machine without internet access.
#
#   OUT=DIR scripts/gpu_suite.sh probe   (~7 min): make bench (bench.csv), then the aggregate img/s of 1, 4
#                                         and 8 runs side by side, eager and compiled (side_by_side*.csv: they
#                                         size WORKERS and the gpu preset)
#   OUT=DIR scripts/gpu_suite.sh suite   (~10 min): the campaign (BUDGET seconds of training and evaluation,
#                                         WORKERS runs side by side), then the notebooks within LIMIT seconds
#
# Offline inputs: Fashion-MNIST's four .gz files in FASHION_MNIST_DIR (default offline/fashion-mnist when it
# exists), and the Python packages the machine lacks as wheels in .whl/ (scripts/offline_wheels.sh fetches
# them on a machine with internet access). LIMIT counts from the script's start, so a hard limit on the whole
# command (a batch job's) can be matched. Everything worth keeping goes to $OUT/results as it is produced
# (the records as soon as the campaign ends, again on exit): a suite cut by its limit still returns every
# finished run, and a later call trains only the runs without a record.
# A functional check on a CPU: PRESET=smoke OUT=/tmp/out WORKERS=2 scripts/gpu_suite.sh suite
set -uo pipefail
SECONDS=0
mode=${1:?usage: OUT=DIR scripts/gpu_suite.sh probe|suite}
: "${OUT:?OUT must name the folder that receives the results}"
PRESET=${PRESET:-gpu} WORKERS=${WORKERS:-6} BUDGET=${BUDGET:-390} LIMIT=${LIMIT:-570} BENCH_TIMEOUT=${BENCH_TIMEOUT:-140}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${FASHION_MNIST_DIR:-}" ] && [ -d offline/fashion-mnist ]; then export FASHION_MNIST_DIR="$PWD/offline/fashion-mnist"; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
PY=${PY:-python3}
# Check the environment first: a broken start costs seconds, not the whole limit.
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
MODE=$mode PRESET=$PRESET $PY - <<'CHECK' || exit 3
import importlib, os, sys
mode, preset = os.environ["MODE"], os.environ["PRESET"]
missing = []
for name in ["torch", "timm", "pandas", "matplotlib", "seaborn", "scipy", "tqdm"] + \
        (["papermill", "ipykernel"] if mode == "suite" else []):
    try:
        importlib.import_module(name)
    except Exception as err:
        missing.append(f"{name} ({err})")
if missing:
    sys.exit("environment check failed: cannot import " + ", ".join(missing)
             + ". Put their wheels into .whl/ (scripts/offline_wheels.sh) and run again.")
import torch, timm
from mixedae_core.config import make_config
from mixedae_core.data import DatasetError, find_fashion_mnist
print("torch", torch.__version__, "timm", timm.__version__, "cuda", torch.cuda.is_available())
config = make_config(preset)
if config.device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(f"environment check failed: preset {preset} trains on CUDA, and torch {torch.__version__} sees no GPU.")
if config.dataset == "fashion-mnist":
    try:
        print("Fashion-MNIST:", find_fashion_mnist())
    except DatasetError as err:
        sys.exit(f"environment check failed: {err}")
CHECK
mkdir -p "$OUT/results/tables"
case $mode in
  probe)
    # make bench first (the committed GPU rows), then how many runs fit side by side, eager and compiled
    timeout "$BENCH_TIMEOUT" $PY benchmarks/bench.py && cp results/tables/bench.csv "$OUT/results/tables/"
    timeout "${PROBE_TIMEOUT:-150}" $PY benchmarks/side_by_side.py --preset "$PRESET" --workers 1 4 8 \
      --methods mae mixedae --steps 60 --out "$OUT/results/tables/side_by_side.csv"
    timeout "${COMPILE_TIMEOUT:-130}" $PY benchmarks/side_by_side.py --preset "$PRESET" --workers 1 4 \
      --methods mixedae --steps 60 --compile --out "$OUT/results/tables/side_by_side_compiled.csv"
    ;;
  suite)
    collect() {
      cp -r results/runs results/tables results/figures results/notebooks results/README.md "$OUT/results/" 2>/dev/null
      tar czf "$OUT/run-logs.tgz" "${MIXEDAE_RUNS:-runs}/logs" 2>/dev/null
    }
    trap collect EXIT
    $PY -m mixedae_core campaign --preset "$PRESET" --workers "$WORKERS" --budget "$BUDGET" --no-progress 2>&1 \
      | tee "$OUT/campaign.log"
    rc=${PIPESTATUS[0]}
    collect
    left=$(( LIMIT - SECONDS ))
    if [ "$rc" = 0 ] && [ "$left" -gt 120 ]; then  # the notebooks, within what is left of LIMIT
      timeout -k 10 "$left" $PY -m mixedae_core reproduce --preset "$PRESET" --workers "$WORKERS" \
        --budget $(( left - 90 )) --no-progress 2>&1 | tee "$OUT/reproduce.log"
      rc=${PIPESTATUS[0]}
    else
      echo "notebooks not run: campaign exit $rc, ${left} s left of LIMIT=$LIMIT"
    fi
    echo "exit $rc after $SECONDS s"
    exit "$rc"
    ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac
