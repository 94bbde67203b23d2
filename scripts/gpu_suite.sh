#!/usr/bin/env bash
# The GPU results in one device call (issue 7). Run through the `device` tool from the repository root,
# carrying .device (Fashion-MNIST) and .whl (papermill and a Jupyter kernel: scripts/device_wheels.sh):
#
#   probe  (~3 min): side-by-side throughput of the gpu preset (sizes WORKERS and the epochs), make bench
#   suite  (~10 min): the campaign (BUDGET seconds of training and evaluation, WORKERS runs side by side),
#                     then the notebooks within what is left of LIMIT seconds
#
# What comes back under $OUT/results is what gets committed: the records (results/runs/gpu: config, metrics,
# summary, eval; no checkpoints), tables, figures, executed notebooks, results/README.md. Runs recorded in
# an earlier call are not trained again, so a suite cut by its budget continues in the next call.
# Locally, on CPU: PRESET=smoke OUT=/tmp/out scripts/gpu_suite.sh suite
set -uo pipefail
SECONDS=0  # LIMIT counts from here: the device tool's limit covers the whole command
mode=${1:?usage: scripts/gpu_suite.sh probe|suite}
: "${OUT:?OUT must name the folder whose files come back}"
PRESET=${PRESET:-gpu} WORKERS=${WORKERS:-6} BUDGET=${BUDGET:-390} LIMIT=${LIMIT:-570} BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .device/fashion-mnist ]; then export FASHION_MNIST_DIR="$PWD/.device/fashion-mnist"; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p "$OUT/results/tables"
case $mode in
  probe)
    timeout 240 $PY benchmarks/side_by_side.py --preset "$PRESET" --workers 1 4 8 --methods mae mixedae --steps 60 \
      --out "$OUT/results/tables/side_by_side.csv"
    timeout "$BENCH_TIMEOUT" $PY benchmarks/bench.py
    cp results/tables/bench.csv "$OUT/results/tables/"
    ;;
  suite)
    # Records are copied out as soon as the campaign ends, and again on exit: a call killed at its time
    # limit still brings back every run it finished.
    collect() {
      cp -r results/runs results/tables results/figures results/notebooks results/README.md "$OUT/results/" 2>/dev/null
      tar czf "$OUT/run-logs.tgz" "${MIXEDAE_RUNS:-runs}/logs" 2>/dev/null
    }
    trap collect EXIT
    $PY -c "import papermill, ipykernel" || echo "papermill/ipykernel missing: the campaign runs, the notebooks fail"
    $PY -m mixedae_core campaign --preset "$PRESET" --workers "$WORKERS" --budget "$BUDGET" --no-progress 2>&1 \
      | tee "$OUT/campaign.log"
    rc=${PIPESTATUS[0]}
    collect
    left=$(( LIMIT - SECONDS ))
    if [ "$rc" = 0 ] && [ "$left" -gt 120 ]; then  # the notebooks, within what is left of this call
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
