#!/usr/bin/env bash
# Build (or reuse) the Python environment the mmdetection backend runs in.
#
#   scripts/mmdet-env.sh [ENV_DIR]      default: ${SWEEP_MMDET_ENV:-$HOME/.cache/sweep/mmdet-env}
#
# mmcv ships only as source on PyPI and its 2.1.0 release hard-codes -std=c++14/17, which torch 2.14's
# headers refuse (they need C++20). We download the sdist, raise every C++ standard flag to c++20 and
# compile the CPU ops (MMCV_WITH_OPS=1; set FORCE_CUDA=1 on a machine with nvcc for the CUDA ops).
# About 17 minutes on 2 cores; the environment lives outside the clone and is reused when present
# (the stamp file records what was built). Prints the interpreter path on its last line.
set -euo pipefail

ENV_DIR="${1:-${SWEEP_MMDET_ENV:-$HOME/.cache/sweep/mmdet-env}}"
TORCH="torch==2.14.1 torchvision==0.29.1"
MMCV=2.1.0
MMENGINE=0.10.7
MMDET=3.3.0
WANT="torch=2.14.1 torchvision=0.29.1 mmcv=$MMCV mmengine=$MMENGINE mmdet=$MMDET ops=cpu${FORCE_CUDA:+,cuda}"
STAMP="$ENV_DIR/.sweep-mmdet-stamp"
PY="$ENV_DIR/bin/python"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c 'import mmdet, mmcv.ops' 2>/dev/null; then
    echo "mmdet environment ready: $ENV_DIR" >&2
    echo "$PY"
    exit 0
fi

mkdir -p "$(dirname "$ENV_DIR")"
exec 9>"$ENV_DIR.lock"
flock 9   # two builds of the same env (two CI jobs) wait for each other
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "$PY"
    exit 0
fi

echo "building the mmdet environment in $ENV_DIR (one time, ~20 min on 2 cores)" >&2
rm -rf "$ENV_DIR"
python3 -m venv "$ENV_DIR"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q $TORCH
# mmcv's setup.py imports pkg_resources (gone from setuptools >= 70); build without isolation.
"$PY" -m pip install -q "setuptools<70" wheel ninja "mmengine==$MMENGINE" opencv-python-headless \
    "numpy<2.3" pycocotools

SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV" -d "$SRC"
tar -xzf "$SRC"/mmcv-"$MMCV".tar.gz -C "$SRC"
sed -i -E 's/-std=c\+\+1[147]/-std=c++20/g' "$SRC/mmcv-$MMCV/setup.py"
grep -q -- '-std=c++20' "$SRC/mmcv-$MMCV/setup.py"
MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" -m pip install -q --no-build-isolation "$SRC/mmcv-$MMCV"
"$PY" -m pip install -q "mmdet==$MMDET"
"$PY" -c 'import mmdet, mmcv; from mmcv.ops import nms, RoIAlign; print("mmdet", mmdet.__version__, "mmcv", mmcv.__version__)' >&2
echo "$WANT" > "$STAMP"
echo "$PY"
