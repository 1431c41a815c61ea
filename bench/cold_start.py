"""CLI cold start: wall time of one `anomaly` process for commands that need no Keras.

Trains a tiny bundle through the CLI (a generated CSV), signs it with a fresh EC key, then
runs each command ``--repeats`` times as a new process and reports the median wall time and
its ratio to ``anomaly --help`` in the same run (the machine is shared: ratios travel better
than seconds). The target of issue 19 is under 1 s each. The load average before and after
is printed and recorded: compare runs by their ratios when it is high.

    python bench/cold_start.py --out bench/results/cold_start.json

``--source DIR`` times the ``anomaly`` package in DIR instead of the installed one (put
first on ``PYTHONPATH`` of every process, the bundle's training and signing included), to
time an older commit in the same environment: ``git archive OLD | tar -x -C DIR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testsupport.keys import key_pair  # noqa: E402

TARGET_S = 1.0


def _anomaly(*args: str) -> list[str]:
    exe = shutil.which("anomaly")
    if exe is None:
        raise SystemExit("the `anomaly` console script is not on PATH (pip install -e .)")
    return [exe, *args]


def _setup(tmp: Path) -> dict[str, Path]:
    """A trained, signed bundle and its public key, made through the CLI."""
    rng = np.random.default_rng(0)
    data = tmp / "normal.csv"
    with open(data, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"x{i}" for i in range(6)])
        writer.writerows(rng.normal(size=(400, 6)).round(5))
    bundle = tmp / "bundle"
    subprocess.run(
        _anomaly("train", str(data), "--out", str(bundle), "--epochs", "1", "--quiet"),
        check=True,
        capture_output=True,
    )
    private, public = key_pair(tmp, "key")
    subprocess.run(
        _anomaly("sign", "--bundle", str(bundle), "--key", str(private)),
        check=True,
        capture_output=True,
    )
    return {"bundle": bundle, "public": public, "data": data}


def _time(args: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(args, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    """Time the commands and print a markdown table (and write JSON with --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--source", type=Path, default=None, help="time anomaly from DIR")
    args = parser.parse_args()
    if args.source:
        path = [str(args.source.resolve()), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        paths = _setup(Path(tmp))
        bundle = str(paths["bundle"])
        commands = {
            "anomaly --help": _anomaly("--help"),
            "info": _anomaly("info", "--bundle", bundle),
            "threshold --history": _anomaly("threshold", "--bundle", bundle, "--history"),
            "verify --public-key": _anomaly(
                "verify", "--bundle", bundle, "--public-key", str(paths["public"])
            ),
            "score --bundle MISSING": _anomaly(
                "score",
                "--bundle",
                str(Path(tmp) / "missing"),
                str(paths["data"]),
                "--out",
                str(Path(tmp) / "s.csv"),
            ),
        }
        rows = {name: _time(cmd, args.repeats) for name, cmd in commands.items()}
    load = {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()}
    base = statistics.median(rows["anomaly --help"])
    runs = f"median s ({args.repeats} runs)"
    print(f"| command | {runs} | min s | / `--help` | under {TARGET_S:g} s |")
    print("|---|---:|---:|---:|---|")
    for name, seconds in rows.items():
        median = statistics.median(seconds)
        print(
            f"| `{name}` | {median:.2f} | {min(seconds):.2f} | {median / base:.1f}x | "
            f"{'yes' if median < TARGET_S else 'no'} |"
        )
    print(
        f"load average (1 min) {load['before'][0]:.2f} before, {load['after'][0]:.2f} after, "
        f"{load['cpus']} CPUs" + (f"; anomaly from {args.source}" if args.source else "")
    )
    if args.out:
        summary = {
            name: {
                "median_s": round(statistics.median(seconds), 3),
                "ratio_to_help": round(statistics.median(seconds) / base, 2),
            }
            for name, seconds in rows.items()
        }
        result = {
            "repeats": args.repeats,
            "source": str(args.source) if args.source else None,
            "load_average": load,
            "summary": summary,
            "seconds": rows,
        }
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
