"""Batch scoring throughput: one process (`anomaly score`, `anomaly score-images`) vs Spark
local[2] (`anomaly spark-score`), each command timed end to end as a user runs it (process
start, Keras import, bundle load, reading, scoring, writing; Spark: JVM and Python workers
too), plus the max |score difference| between the two on the same rows.

    python bench/spark.py --rows 200000 --images 3000 --out bench/results/spark.json

The tabular bundle is the test suite's tiny GANomaly (5 features, memory bank of 420 rows);
the image bundle a default conv GANomaly (32x32x1, filters 32, 1 epoch on 500 discs).
Throughput, not detection quality, is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(command: list[str]) -> float:
    """Wall seconds of one CLI command (exit code 0 required)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def anomaly(*args: str) -> list[str]:
    return [sys.executable, "-m", "anomaly.cli", "--log-level", "WARNING", *args]


def tabular(work: Path, n_rows: int, master: str) -> list[dict]:
    import pandas as pd

    from testsupport.data import FEATURES, make_tabular_data, train_tiny_bundle

    bundle = train_tiny_bundle(work / "tiny")
    normal, anomalies = make_tabular_data(n_rows - n_rows // 100, n_rows // 100, seed=1)
    rows = np.concatenate([normal, anomalies])
    rows[:, 4] = np.abs(rows[:, 4]) * 100
    frame = pd.DataFrame(rows, columns=FEATURES)
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(work / "rows.csv", index=False, float_format="%.9g")
    frame.to_parquet(work / "rows.parquet")

    results = []
    seconds = run(
        anomaly(
            "score",
            "--bundle",
            str(bundle),
            str(work / "rows.csv"),
            "--out",
            str(work / "single.jsonl"),
        )
    )
    results.append(
        {
            "job": "records",
            "engine": "anomaly score (1 process)",
            "input": "CSV",
            "n": n_rows,
            "seconds": seconds,
        }
    )
    for kind in ("csv", "parquet"):
        out = work / f"spark-{kind}"
        seconds = run(
            anomaly(
                "spark-score",
                "--bundle",
                str(bundle),
                "--master",
                master,
                str(work / f"rows.{kind}"),
                "--out",
                str(out),
            )
        )
        results.append(
            {
                "job": "records",
                "engine": f"spark-score {master}",
                "input": kind.upper() if kind == "csv" else "Parquet",
                "n": n_rows,
                "seconds": seconds,
            }
        )
    single = pd.read_json(work / "single.jsonl", lines=True, dtype={"id": str}).set_index("id")
    spark = pd.read_parquet(work / "spark-csv").set_index("id").loc[single.index]
    diff = float(np.abs(spark["score"].to_numpy() - single["score"].to_numpy()).max())
    for r in results:
        r["max_abs_score_diff"] = diff
    # the fixed cost of each command (start-up, imports, bundle load; Spark: JVM, workers)
    frame.head(1000).to_csv(work / "small.csv", index=False, float_format="%.9g")
    for engine, command in (
        ("anomaly score (1 process)", anomaly("score", "--bundle", str(bundle))),
        (
            f"spark-score {master}",
            anomaly("spark-score", "--bundle", str(bundle), "--master", master),
        ),
    ):
        out = work / ("small.jsonl" if "1 process" in engine else "small-spark")
        seconds = run(command + [str(work / "small.csv"), "--out", str(out)])
        results.append(
            {
                "job": "records (fixed cost)",
                "engine": engine,
                "input": "CSV",
                "n": 1000,
                "seconds": seconds,
                "max_abs_score_diff": None,
            }
        )
    return results


def images(work: Path, n_images: int, master: str) -> list[dict]:
    import pandas as pd

    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import train_bundle
    from anomaly.imaging.readers import load_training_images
    from testsupport.images import cross_image, normal_discs, write_png

    for i, image in enumerate(normal_discs(500, 32, seed=0)):
        write_png(work / "train" / f"{i:04d}.png", image)
    X, options = load_training_images(work / "train", 32, 1)
    bundle = train_bundle(
        X,
        work / "conv",
        Schema.image(*X.shape[1:]),
        detector_params={"epochs": 1},
        image_preprocessing=options,
    ).path
    folder = work / "incoming"
    for i, image in enumerate(normal_discs(n_images - n_images // 50, 32, seed=1)):
        write_png(folder / f"{i // 1000:02d}" / f"{i:05d}.png", image)
    for i in range(n_images // 50):
        write_png(folder / "odd" / f"cross{i:03d}.png", cross_image(32))

    results = []
    seconds = run(
        anomaly(
            "score-images",
            "--bundle",
            str(bundle),
            str(folder),
            "--out",
            str(work / "report"),
            "--quiet",
        )
    )
    results.append(
        {
            "job": "images",
            "engine": "anomaly score-images (1 process)",
            "input": "PNG folder",
            "n": n_images,
            "seconds": seconds,
        }
    )
    seconds = run(
        anomaly(
            "spark-score",
            "--images",
            "--bundle",
            str(bundle),
            "--master",
            master,
            str(folder),
            "--out",
            str(work / "spark-images"),
        )
    )
    results.append(
        {
            "job": "images",
            "engine": f"spark-score {master}",
            "input": "PNG folder",
            "n": n_images,
            "seconds": seconds,
        }
    )
    single = pd.read_csv(work / "report" / "scores.csv").set_index("path")
    spark = pd.read_parquet(work / "spark-images")
    spark.index = [p.removeprefix("file:") for p in spark["path"]]
    # scores.csv holds 6 significant digits: the difference is bounded by that rounding
    diff = float(np.abs(spark.loc[single.index, "score"].to_numpy() - single["score"]).max())
    for r in results:
        r["max_abs_score_diff"] = diff
    return results


def markdown(results: list[dict]) -> str:
    lines = [
        "| job | engine | input | n | seconds | per second | max abs score diff |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['job']} | {r['engine']} | {r['input']} | {r['n']} | "
            f"{r['seconds']:.1f} | {r['n'] / r['seconds']:,.0f} | "
            f"{'' if r['max_abs_score_diff'] is None else format(r['max_abs_score_diff'], '.1e')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spark.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        work = Path(tmp)
        (work / "tab").mkdir()
        (work / "img").mkdir()
        results = tabular(work / "tab", args.rows, args.master)
        results += images(work / "img", args.images, args.master)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "command": f"python bench/spark.py --rows {args.rows} --images {args.images} "
        f"--out {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
