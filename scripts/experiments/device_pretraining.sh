#!/usr/bin/env bash
# Self-supervision with a GPU's compute, on the default data: what pretraining buys at 10% labels
# when compute is not the limit (docs/training.md, "Pretraining with a GPU's compute").
#
#     bash scripts/experiments/device_pretraining.sh OUT [EPOCHS_LONG] [EPOCHS_4X]
#
# Needs python3 with torch, numpy, pyyaml and pydantic (the data steps read calibrations through
# pydantic; the training steps import with the first three, and fine-tuning measures with
# torchmetrics). It renders the default data on
# the node (the synthesize, prepare and unlabeled steps, as dvc.yaml runs them; their sha256 is
# printed to compare with a workstation's), and a 4x larger unlabeled set (unlabeled.clips_per_camera
# x 4), then runs scripts/experiments/pretraining.py, in this order: SimCLR for the default 4 epochs
# (the control) and for EPOCHS_LONG (default 64) on the default unlabeled set, with the scratch arm;
# SimCLR for EPOCHS_4X (default 32) on the 4x set; MTM for EPOCHS_LONG on the default set. Every other knob is
# params.yaml's (or $TRAIN_PARAMS's), except the few-label fine-tunes: FEW_EPOCHS (default 96) epochs for both arms, so
# that they are compared at convergence (docs/training.md, "Scratch trained to convergence": at params.yaml's 12
# epochs scratch is far from its best). The data steps always use params.yaml, so that the data equal a workstation's.
# Results: OUT/default.json, OUT/unlabeled4x.json, OUT/mtm.json (and OUT/log.txt when the caller tees into it).
set -euo pipefail
out=${1:?usage: device_pretraining.sh OUT [EPOCHS_LONG] [EPOCHS_4X]}
long=${2:-64}
x4=${3:-32}
few=${FEW_EPOCHS:-96}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
work=${WORK:-/tmp/thermops-device-pretraining}
mkdir -p "$work"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

if [ ! -f data/prepared/tubelets.npy ]; then
  for cam in $($py -c "import yaml; print(' '.join(yaml.safe_load(open('params.yaml'))['cameras']))"); do
    stamp "synthesize $cam"
    $py -m components.synthesize --params params.yaml --calibration "data/calibration/$cam.yaml" \
      --out "data/raw/synthetic/$cam"
  done
  stamp prepare
  $py -m components.prepare --params params.yaml --raw data/raw --calibration data/calibration --out data/prepared
  stamp unlabeled
  $py -m components.unlabeled --params params.yaml --calibration data/calibration --raw data/raw \
    --out data/unlabeled --cache "$work/unlabeled-cache"
fi
sha256sum data/prepared/tubelets.npy data/unlabeled/tubelets.npy

$py - "${TRAIN_PARAMS:-params.yaml}" "$work/params.yaml" "$few" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["finetune"]["low_label"]["optim"]["epochs"] = int(sys.argv[3])
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY

stamp "pretraining: default unlabeled set (few-label arms: $few epochs)"
$py scripts/experiments/pretraining.py --params "$work/params.yaml" --data data/prepared --unlabeled data/unlabeled \
  --work "$work/default" --out "$out/default.json" \
  --variants simclr:unlabeled:4 "simclr:unlabeled:$long"

if [ ! -f "$work/unlabeled4x/tubelets.npy" ]; then
  stamp "unlabeled x4"
  $py - "$work/params4x.yaml" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))  # the data step: params.yaml's, x 4 clips
p["unlabeled"]["clips_per_camera"] *= 4
yaml.safe_dump(p, open(sys.argv[1], "w"), sort_keys=False)
PY
  $py -m components.unlabeled --params "$work/params4x.yaml" --calibration data/calibration --raw data/raw \
    --out "$work/unlabeled4x" --cache "$work/unlabeled4x-cache"
fi
stamp "pretraining: 4x unlabeled set"
$py scripts/experiments/pretraining.py --params "$work/params.yaml" --data data/prepared --unlabeled "$work/unlabeled4x" \
  --work "$work/x4" --out "$out/unlabeled4x.json" --no-scratch \
  --variants "simclr:unlabeled:$x4"
stamp "pretraining: MTM, default unlabeled set"
$py scripts/experiments/pretraining.py --params "$work/params.yaml" --data data/prepared --unlabeled data/unlabeled \
  --work "$work/default" --out "$out/mtm.json" --no-scratch \
  --variants "mtm:unlabeled:$long"
stamp done
