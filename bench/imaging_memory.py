"""Peak memory of ``anomaly score-images`` on a folder of 20k 64x64 PNGs (target: < 2 GB RSS).

Builds the folder (discs with jittered size and position, 1 % crosses, spread over 20
sub-folders), trains a small conv GANomaly bundle on 512 separate disc images through
``anomaly train --images``, then runs ``/usr/bin/time -v anomaly score-images`` and reads
"Maximum resident set size". RSS includes the Keras backend itself (TensorFlow alone is
several hundred MB), so the figure is the whole process, not only the image pipeline.

    python bench/imaging_memory.py --n 20000 --size 64 --out bench/out/memory
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testsupport.images import cross_image, normal_discs  # noqa: E402


def write_folder(folder: Path, n: int, size: int, seed: int, anomaly_rate: float) -> None:
    """``n`` PNGs under ``folder``/part_XX/, written in chunks (never all in memory)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, 500):
        count = min(500, n - start)
        discs = normal_discs(count, size, seed=seed * 100_003 + start)
        for i in range(count):
            image = cross_image(size) if rng.random() < anomaly_rate else discs[i]
            sub = folder / f"part_{(start + i) % 20:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(sub / f"{start + i:06d}.png")


def anomaly_cmd() -> list[str]:
    exe = shutil.which("anomaly")
    return [exe] if exe else [sys.executable, "-m", "anomaly.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "memory")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        sys.exit("/usr/bin/time not found: apt-get install -y time")
    out = args.out
    images = out / f"images_{args.n}_{args.size}"
    if not images.is_dir() or sum(1 for _ in images.rglob("*.png")) != args.n:
        shutil.rmtree(images, ignore_errors=True)
        write_folder(images, args.n, args.size, seed=1, anomaly_rate=0.01)
    bundle = out / f"bundle_{args.size}"
    if not (bundle / "manifest.json").is_file():
        shutil.rmtree(bundle, ignore_errors=True)
        write_folder(out / "train", 512, args.size, seed=2, anomaly_rate=0.0)
        train = [*anomaly_cmd(), "train", str(out / "train"), "--images", "--out", str(bundle)]
        train += ["--epochs", "2", "--filters", "16", "--quiet"]
        subprocess.run(train, check=True)
    report = out / "report"
    shutil.rmtree(report, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", *anomaly_cmd(), "score-images", "--bundle", str(bundle)]
    cmd += [str(images), "--out", str(report), "--batch-size", str(args.batch_size), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(
        1
    )
    result = {
        "images": args.n,
        "size": args.size,
        "batch_size": args.batch_size,
        "exit_code": proc.returncode,
        "max_rss_mb": round(rss_kb / 1024, 1),
        "wall": wall,
        "scored_rows": sum(1 for _ in open(report / "scores.csv")) - 1,
        "flagged": len(list((report / "thumbs").glob("*_input.png"))),
        "stdout": proc.stdout.strip().splitlines()[-2:],
    }
    (out / f"result_{args.n}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if result["max_rss_mb"] >= 2048:
        sys.exit("peak RSS is over 2 GB")


if __name__ == "__main__":
    main()
