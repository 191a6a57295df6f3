#!/usr/bin/env bash
# Train one task on ONE GPU.
#
#   scripts/train_gpu.sh temperature                 # or segmentation | nowcasting
#   scripts/train_gpu.sh segmentation --trainer.max_epochs 100 --data.data_dir /scratch/climatenet
#
# Everything comes from configs/<task>.yaml; the flags below only switch the hardware on, and anything
# after the task name is passed on to `climateml fit` (any config key, e.g. --data.batch_size 32).
# What to change:
#   PRECISION   bf16-mixed on Ampere or newer (A100, H100, L40 ...); 16-mixed on older GPUs (V100, T4);
#               32-true to compare with a CPU run bit for bit (slower).
#   WORKERS     DataLoader worker processes: about the number of CPU cores per GPU minus one. Each worker
#               opens its own files (segmentation and nowcasting read one sample at a time from disk).
#   CUDA_VISIBLE_DEVICES   which GPU (e.g. CUDA_VISIBLE_DEVICES=1 scripts/train_gpu.sh ...).
# Pinned memory is switched on automatically on a GPU (data.pin_memory: null); the run directory is
# runs/<task>/version_N. Started again with the same command after a crash, it continues the interrupted
# run from its last checkpoint (runs/<task>/version_N/checkpoints/resume.ckpt; --resume false: start anew).
set -euo pipefail
TASK=${1:?usage: scripts/train_gpu.sh temperature|segmentation|nowcasting [climateml fit options]}
shift
PRECISION=${PRECISION:-bf16-mixed}
WORKERS=${WORKERS:-4}
cd "$(dirname "$0")/.."

exec climateml fit --config "configs/${TASK}.yaml" \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.precision "$PRECISION" \
    --data.num_workers "$WORKERS" \
    "$@"
