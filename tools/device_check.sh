#!/bin/bash
# GPU checks, for a session that is lent a device machine. Its image (Python 3.12, torch, torchvision,
# rich, matplotlib, pyyaml, packaging) lacks Hydra, OmegaConf and ANTLR's runtime, all pure Python:
# carry those. Prepare once, here:
#   SP=.venv/lib/python3.11/site-packages; mkdir -p .devsite
#   for p in hydra omegaconf antlr4; do cp -r $SP/$p .devsite/; done
#   echo /.devsite/ >> .git/info/exclude
# then on the device, with carry [".devsite"], one part per call (each fits a 600 s command), in
# this order, the device time being short (15 min, start-up included):
#   bash tools/device_check.sh grid64   issue 22's GPU target: 64 jobs through both launchers (~5 min)
#   bash tools/device_check.sh sweep    issue 22: K jobs one by one vs vectorised, K = 1, 4, 16, 64 (~1 min)
#   bash tools/device_check.sh single   the single-run checks (article run, determinism, resume, bench)
# Results land in $OUT; bench writes its figures only at its end, so each part runs under a
# timeout short of the command's limit. The package runs from the source tree (PYTHONPATH), not
# installed: config.CONF_DIR then reads conf/ at the top of the clone.

export PYTHONPATH=$PWD:$PWD/.devsite PYTHONUNBUFFERED=1 COLUMNS=120
W=/tmp/w; rm -rf $W; mkdir -p $W   # a second call on a warm machine starts clean, not from the last call's runs
case "$1" in sweep|grid64|single) ;; *) echo "usage: bash tools/device_check.sh sweep|grid64|single"; exit 2 ;; esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, hydra, omegaconf, rich; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'hydra', hydra.__version__)"
# TF32 would make the GPU's float32 products differ from the CPU's more than rounding: say whether it is on
python3 -c "import os, torch; print('tf32 matmul', torch.backends.cuda.matmul.allow_tf32, 'precision', torch.get_float32_matmul_precision(), 'TORCH_ALLOW_TF32_CUBLAS_OVERRIDE', os.environ.get('TORCH_ALLOW_TF32_CUBLAS_OVERRIDE'))"
lscpu | grep -E "Model name|^CPU\(s\)"
if [ "$1" = sweep ]; then
    echo "== vectorised sweeps (issue 22): K jobs one by one vs as one model, per job"
    timeout 540 python3 -m backprop_lab bench --sweep 1,4,16,64 --device cuda --epochs 3 \
        --json $OUT/bench_sweep_cuda.json --plot $OUT/sweep_k_cuda.png 2>&1 | grep -v "^bench:"
    exit 0
fi
if [ "$1" = grid64 ]; then
    echo "== the GPU target: 64 jobs through both launchers (vectorised >= 10x faster)"
    timeout 540 python3 -m backprop_lab bench --grid 64 --device cuda --json $OUT/bench_grid64_cuda.json 2>&1 | tail -3
    exit 0
fi
echo "== article run on cuda"
TIME=""; [ -x /usr/bin/time ] && TIME='/usr/bin/time -f "wall %e s, max RSS %M KB"'
eval $TIME python3 -m backprop_lab experiment=article device=cuda hydra.run.dir=$W/article > $OUT/article_cuda.txt 2>&1
tail -25 $OUT/article_cuda.txt
cp $W/article/summary.json $OUT/article_cuda_summary.json 2>/dev/null
echo "== fused=false, determinism, resume"
python3 -m backprop_lab experiment=article device=cuda train.epochs=2 train.fused=false hydra.run.dir=$W/plain 2>&1 | grep -E "^\s+[0-9]|status|error"
python3 -m backprop_lab experiment=article device=cuda train.epochs=3 hydra.run.dir=$W/d1 > /dev/null 2>&1
python3 -m backprop_lab experiment=article device=cuda train.epochs=3 hydra.run.dir=$W/d2 > /dev/null 2>&1
python3 -m backprop_lab experiment=article device=cuda train.epochs=3 hydra.run.dir=$W/r > $W/r.out 2>&1 &
P=$!; for i in $(seq 600); do grep -qE "^\s+1 " $W/r.out 2>/dev/null && break; sleep 0.05; done; kill -INT $P; wait $P; echo "interrupted rc=$?"
# the check means something only if the run stopped before its last epoch
python3 -c "import json; s = json.load(open('$W/r/summary.json')); print('stopped:', s['status'], 'after', s['epochs_completed'], 'of 3 epochs', '' if s['status'] == 'interrupted' and s['epochs_completed'] < 3 else '(NOT A TEST OF RESUME)')"
python3 -m backprop_lab resume $W/r > $W/resume.out 2>&1; echo "resume rc=$?"; tail -3 $W/resume.out
python3 - <<'PY'
import csv, torch
def rows(d): return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in csv.DictReader(open(f"/tmp/w/{d}/metrics.csv"))]
def w(d): return torch.load(f"/tmp/w/{d}/weights.pt", weights_only=True)
print("same seed, same metrics on cuda:", rows("d1") == rows("d2"), "weights:", all(torch.equal(w("d1")[k], w("d2")[k]) for k in w("d1")))
print("resumed == uninterrupted on cuda:", rows("r") == rows("d1"), "weights:", all(torch.equal(w("r")[k], w("d1")[k]) for k in w("d1")))
PY
echo "== bench on cuda"
timeout 240 python3 -m backprop_lab bench --device cuda --json $OUT/bench_cuda.json --no-startup --no-scaling 2>&1 | tail -40
