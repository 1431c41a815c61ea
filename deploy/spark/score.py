"""spark-submit entry point: runs ``anomaly spark-score`` with the arguments it is given.

    spark-submit --master local[2] deploy/spark/score.py \
        --bundle models/fraud transactions.parquet --out scores.parquet

spark-submit needs a Python file to run; this one turns its arguments into the CLI command,
so the job and ``anomaly spark-score`` are the same code with the same options.
"""

import sys

from anomaly.cli import main

if __name__ == "__main__":
    sys.exit(main(["spark-score", *sys.argv[1:]]))
