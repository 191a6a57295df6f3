#!/usr/bin/env bash
# Train one task on SEVERAL GPUs of ONE machine with DDP (one process per GPU).
#
#   scripts/train_ddp.sh segmentation                # all visible GPUs
#   GPUS=4 scripts/train_ddp.sh nowcasting --data.batch_size 8
#
# Lightning starts one process per GPU (it re-runs this same command for ranks 1..N-1). Each process
# reads only its own shard of every epoch (no sample twice per epoch; the order depends only on the seed
# and the epoch), logged metrics are reduced over all processes, and the evaluation after training
# (metrics.json, predictions, figures) runs once, on rank 0.
# What to change:
#   GPUS        number of GPUs (default: all that nvidia-smi lists).
#   data.batch_size is PER GPU: the global batch is batch_size x GPUS. Keep the global batch of a
#               single-GPU run by dividing batch_size by GPUS, or scale model.lr with the global batch.
#   PRECISION, WORKERS   as in train_gpu.sh (WORKERS per GPU process).
#   SYNC_BN     true: BatchNorm statistics over the global batch (the U-Nets use norm: batch); costs one
#               all-reduce per BatchNorm layer and step. false keeps per-GPU statistics.
# A crash or kill: run the same command again; it resumes from the last checkpoint (every
# every_n_train_steps steps, see climateml.resume.ResumeCheckpoint) with the same number of GPUs.
set -euo pipefail
TASK=${1:?usage: scripts/train_ddp.sh temperature|segmentation|nowcasting [climateml fit options]}
shift
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
PRECISION=${PRECISION:-bf16-mixed}
WORKERS=${WORKERS:-4}
SYNC_BN=${SYNC_BN:-true}
cd "$(dirname "$0")/.."

exec climateml fit --config "configs/${TASK}.yaml" \
    --trainer.accelerator gpu --trainer.devices "$GPUS" --trainer.strategy ddp \
    --trainer.precision "$PRECISION" --trainer.sync_batchnorm "$SYNC_BN" \
    --data.num_workers "$WORKERS" \
    "$@"
