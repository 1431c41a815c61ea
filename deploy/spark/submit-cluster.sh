#!/usr/bin/env bash
# Backfill a dataset on a Spark cluster (YARN shown; for Kubernetes use
# --master k8s://https://<api-server> and an image with Java 17 and anomaly-gan[spark]).
#
#   deploy/spark/submit-cluster.sh models/fraud s3a://bucket/transactions/ s3a://bucket/scores/
#
# Ships two things with the job, so the executors need neither a shared disk nor a
# pre-installed environment:
#   - the Python environment (venv-pack of a venv with anomaly-gan[spark] installed), unpacked
#     as ./env on every executor and used by its Python workers;
#   - the bundle, zipped, unpacked as ./<bundle name> on every executor. The driver reads the
#     manifest from BUNDLE; each executor loads ./<bundle name> once per Python worker and
#     refuses it if its manifest differs from the driver's.
set -euo pipefail
BUNDLE=${1:?bundle directory}
SOURCE=${2:?input dataset (Parquet folder, .csv or .jsonl)}
OUT=${3:?output URI for the scores (errors go to OUT-errors)}
NAME=$(basename "$BUNDLE")
WORK=$(mktemp -d)

# the archive holds the bundle's files at its root: unpacked as ./$NAME/manifest.json, ...
(cd "$BUNDLE" && zip -qr "$WORK/$NAME.zip" .)
# venv-pack (pip install venv-pack) packs the active virtualenv, anomaly-gan[spark] included
venv-pack -o "$WORK/env.tar.gz" --force

PYSPARK_PYTHON=./env/bin/python spark-submit \
  --master yarn --deploy-mode client \
  --num-executors "${EXECUTORS:-8}" --executor-cores "${EXECUTOR_CORES:-4}" \
  --executor-memory "${EXECUTOR_MEMORY:-8g}" \
  --conf spark.executorEnv.KERAS_BACKEND="${KERAS_BACKEND:-tensorflow}" \
  --conf spark.executorEnv.TF_NUM_INTRAOP_THREADS=1 \
  --conf spark.executorEnv.OMP_NUM_THREADS=1 \
  --archives "$WORK/env.tar.gz#env,$WORK/$NAME.zip#$NAME" \
  "$(dirname "$0")/score.py" --bundle "$BUNDLE" "$SOURCE" --out "$OUT"
