#!/usr/bin/env bash
# Issue 22's releases, one device call per phase, on the esahubble-381 tiles that
# scripts/device_data.py packed into .devdata/ (see README "Release weights"):
#   bash scripts/gpu_release.sh OUTDIR sr [SECONDS]       EDSR-baseline and RCAN side by side
#   bash scripts/gpu_release.sh OUTDIR guided [SECONDS]   the guided colorizer (pretrain, then GAN)
#   bash scripts/gpu_release.sh OUTDIR data               only unpack what has arrived (a carry-only call)
# Each call first unpacks whichever .devdata parts are on the machine (a warm machine keeps those of
# earlier calls), into $WORK (default /tmp/astrogan_gpu), so the models see every tile that arrived;
# $WORK/data/packed/device_data.json says which. `sr` trains each candidate for SECONDS (default 150)
# at batch 64 on 96 px crops, then scores both on the val split (scripts/sr_compare.py) into
# OUTDIR/sr_compare.json, best first. `guided` pretrains resnet18_lab_guided on the astro tiles at
# 256 px for SECONDS (default 150), then fine-tunes it for SECONDS/2 with val early stopping.
# Generators come back as OUTDIR/<model>/<task>_<model>_<phase>.pt with run.tar.gz and summary.json
# (release_run.py); export them here with `python -m pipeline.release export ...`.
# The parts are read from $DEVDATA (default .devdata). CPU check at tiny sizes: SR_KWARGS_EDSR=...
# SR_KWARGS_RCAN=... BATCH=2 CROP=32 (tests/test_device_data.py).
set -u
out=${1:?usage: bash scripts/gpu_release.sh OUTDIR sr|guided|data [SECONDS]}
phase=${2:?usage: bash scripts/gpu_release.sh OUTDIR sr|guided|data [SECONDS]}
secs=${3:-150}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
work=${WORK:-/tmp/astrogan_gpu}
batch=${BATCH:-64}
crop=${CROP:-96}
edsr=${SR_KWARGS_EDSR:-"{num_feat: 64, num_block: 16, res_scale: 1.0, global_skip: true}"}
rcan=${SR_KWARGS_RCAN:-"{num_feat: 64, num_group: 4, num_block: 8, reduction: 16, res_scale: 1.0, global_skip: true}"}
case $phase in
  data) optional=(--optional val) ;;  # the early calls carry train parts only
  sr|guided) optional=() ;;
  *) echo "unknown phase $phase: use sr, guided or data" >&2; exit 2 ;;
esac
mkdir -p "$out" "$work"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$py" scripts/device_data.py unpack --src "${DEVDATA:-.devdata}" --packed "$work/data/packed" --splits train val \
  ${optional[@]+"${optional[@]}"} || exit 2
cp "$work/data/packed/device_data.json" "$out/device_data.json"

run() {  # run MODEL_DIR ARGS...: release_run.py in its own work folder over the shared data
    local dir=$work/$1; shift
    mkdir -p "$dir"
    ln -sfn "$work/data" "$dir/data"
    "$py" scripts/release_run.py --work "$dir" --out "$out/$(basename "$dir")" --grace 60 "$@"
}

case $phase in
  data) ;;
  sr)
    for m in edsr rcan; do
      run "$m" --only sr_pretrain --set "superres.models=[$m]" --set sr_pretrain.time_limit_s="$secs" \
        --set sr_pretrain.batch_size="$batch" --set sr_pretrain.crop="$crop" \
        --set "superres.zoo.edsr.generator_kwargs=$edsr" --set "superres.zoo.rcan.generator_kwargs=$rcan"
    done
    "$py" scripts/sr_compare.py "$work/data/packed" val "$work"/edsr/models/superres/edsr/pretrained.pt \
      "$work"/rcan/models/superres/rcan/pretrained.pt --out "$out/sr_compare.json"
    ;;
  guided)
    g=colorize.zoo.resnet18_lab_guided
    run guided --only pretrain finetune --set "colorize.pretrain=[resnet18_lab_guided]" \
      --set "colorize.finetune=[resnet18_lab_guided]" \
      --set "$g.pretrain={data: astro, mono: 0, crop: ${GUIDED_CROP:-256}, batch_size: $batch, steps: 100000, log_every: 25, checkpoint_every: 1000, time_limit_s: $secs}" \
      --set "$g.finetune={crop: ${GUIDED_CROP:-256}, batch_size: $batch, steps: 100000, eval_every: 50, patience: 4, log_every: 10, checkpoint_every: 1000, time_limit_s: $((secs / 2))}"
    ;;
esac
echo "results in $out"
