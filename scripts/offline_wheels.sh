#!/usr/bin/env bash
# Wheels for a GPU machine without internet access whose Python has torch, timm, pandas, seaborn, scipy and
# tqdm but not papermill or a Jupyter kernel: downloaded here into .whl/ (git-ignored), copied along with the
# repository, installed there by scripts/gpu_suite.sh.
#
#   PYTHON_VERSION=3.12 SKIP="tqdm pyyaml ..." scripts/offline_wheels.sh
#
# PYTHON_VERSION: the target machine's Python (default 3.12). SKIP: packages the target already has; their
# wheels are left out, so they are not shadowed by another version.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d .whl "papermill==$(grep -oP '^papermill==\K.*' requirements.txt)" "ipykernel==$(grep -oP '^ipykernel==\K.*' requirements.txt)"
for present in ${SKIP:-}; do
  rm -f .whl/${present}-*.whl
done
ls .whl | wc -l | xargs echo "wheels in .whl:"; du -sh .whl
