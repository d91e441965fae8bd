#!/usr/bin/env bash
# The installed wheel as a new user gets it: build it, install it into a fresh virtual environment
# (torch from the local cache, everything else from the package registry), then run a 1-epoch run,
# a 2-job joblib sweep, a 2-job vectorized sweep and compare from a folder outside the clone. A file
# missing from the wheel fails here. Run by .ci/run; takes a few minutes (installing torch dominates).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-"torch==2.14.1 torchvision==0.29.1"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m pip wheel --quiet --no-deps -w "$tmp/dist" . 2> "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
if grep -i warning "$tmp/build.log" | grep -v "WARNING: Location"; then
    echo "wheel_check: building the wheel printed warnings (above)"; exit 1
fi
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet $TORCH
"$tmp/venv/bin/python" -m pip install --quiet "$tmp"/dist/backprop_lab-*.whl

mkdir "$tmp/work" && cd "$tmp/work"
bpl="$tmp/venv/bin/backprop-lab"
"$bpl" data.train_subset=500 train.epochs=1 hydra.run.dir=outputs/one
"$bpl" -m optim.lr=0.05,0.1 data.train_subset=500 train.epochs=1 hydra/launcher=joblib hydra.sweep.dir=outputs/sweep
"$bpl" -m optim.lr=0.05,0.1 data.train_subset=500 train.epochs=1 hydra/launcher=vectorized hydra.sweep.dir=outputs/vec
"$bpl" compare outputs
test "$(ls -A)" = "outputs" || { echo "wheel_check: wrote more than outputs/ in the working folder: $(ls -A)"; exit 1; }
echo "wheel_check: the installed wheel ran a run, two sweeps and compare from $tmp/work"
