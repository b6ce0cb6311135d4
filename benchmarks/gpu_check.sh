#!/usr/bin/env bash
# One GPU call's worth of checks (about 4 minutes on an H100/H200), for a machine with only the GPU
# image's packages (torch, numpy, pillow, scikit-image, tqdm, pyyaml):
#   the CUDA tests, the pix2pix step's profile and the training throughput of the two bar models.
#     bash benchmarks/gpu_check.sh OUTDIR
# Writes OUTDIR/gan_step_profile.json, OUTDIR/train_throughput.json and OUTDIR/gpu_tests.log;
# each part is time-boxed, so a slow one does not lose the others. The throughput is fed by the
# packed tiles in $PACKED (default data/packed; scripts/gpu_release.sh OUT data unpacks the
# esahubble-381 tiles that have arrived into /tmp/astrogan_gpu/data/packed).
set -u
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 90 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_abclass.py > "$out/gpu_tests.log" 2>&1
tail -3 "$out/gpu_tests.log"
timeout 200 "$py" -m benchmarks.gan_step_profile --out "$out/gan_step_profile.json" 2>&1 | grep '^{'
timeout 150 "$py" -m benchmarks.train_throughput --models resnet18_lab edsr --no-fid --steps 20 --warmup 5 \
  --packed "${PACKED:-data/packed}" --out "$out/train_throughput.json" 2>&1 | grep '^{'
echo "results in $out"
