#!/usr/bin/env bash
# Train a model bundle on a GPU node: JAX (default) or TensorFlow backend, mixed precision.
# Refuses to start when the backend sees no GPU (mixed precision is ~2x SLOWER on CPU).
#
#   deploy/train-gpu.sh DATA OUT_DIR [more `anomaly train` options]
#   ANOMALY_TRAIN_BACKEND=tensorflow deploy/train-gpu.sh ...   # needs a CUDA TensorFlow build
#
# The GPU image (deploy/Dockerfile, target train-gpu) runs this script as its entry point.
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 DATA OUT_DIR [anomaly train options...]" >&2
    exit 64
fi
data=$1
out=$2
shift 2
backend=${ANOMALY_TRAIN_BACKEND:-jax}

case "$backend" in
    jax)
        check='import jax; gpus = [d for d in jax.devices() if d.platform == "gpu"]; print(gpus); raise SystemExit(0 if gpus else 1)'
        ;;
    tensorflow)
        check='import tensorflow as tf; gpus = tf.config.list_physical_devices("GPU"); print(gpus); raise SystemExit(0 if gpus else 1)'
        ;;
    *)
        echo "ANOMALY_TRAIN_BACKEND must be jax or tensorflow, not $backend" >&2
        exit 64
        ;;
esac

if ! python -c "$check"; then
    echo "no GPU visible to the $backend backend: check the driver, nvidia.com/gpu and CUDA wheels" >&2
    exit 3
fi

exec anomaly --backend "$backend" train "$data" --out "$out" --mixed-precision "$@"
