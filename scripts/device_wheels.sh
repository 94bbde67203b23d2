#!/usr/bin/env bash
# Wheels for the lent GPU machine, whose python3 (3.12) has torch, timm, pandas, seaborn, scipy, tqdm but no
# papermill or Jupyter kernel: fetched here into .whl/ (git-ignored), carried with `carry: [".whl", ...]`.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d .whl "papermill==$(grep -oP '^papermill==\K.*' requirements.txt)" "ipykernel==$(grep -oP '^ipykernel==\K.*' requirements.txt)"
# already on the device (its package list, /work/.library/device/KINDS.md): one version of each, or pip stops
for present in attrs certifi charset_normalizer click idna packaging psutil pygments python_dateutil pyyaml \
               requests tqdm typing_extensions urllib3; do
  rm -f .whl/${present}-*.whl
done
ls .whl | wc -l | xargs echo "wheels in .whl:"; du -sh .whl
