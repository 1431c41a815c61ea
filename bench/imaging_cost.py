"""What training and scoring images cost at real sizes: images/s at 128 x 128 and 256 x 256,
gray and RGB, for GANomaly at its defaults (the conv width the size picks, batch 64).

The images are smooth random textures (no shared data needed). For each (side, channels)
the detector is fitted once for 1 + ``--epochs`` epochs; the training log's end-of-epoch
lines are timed, and training images/s = images x epochs / (time from the end of the first
epoch, which carries the graph tracing, to the end of the last).
Scoring images/s: ``decision_function`` on the same images, inference mode, after one warm-up
call.

``--cli-images N`` measures instead the figure the issue sets a bound on: wall time of
``anomaly train TRAIN.npz --images`` at every default on the first N real 128 x 128 brain
MRI training scans of ../shared (no tumour), one process start to bundle written, as a user
would see it.

    python bench/imaging_cost.py --out bench/results/imaging_cost-cpu.json
    python bench/imaging_cost.py --cli-images 1000 --out bench/results/imaging_cli_1000.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def textures(n: int, side: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth random textures in [0, 1]: coarse noise upsampled, so conv features vary."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, side // 16, side // 16, channels)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)


class EpochClock(logging.Handler):
    """Times the training log's end-of-epoch lines (``detectors.training``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ends: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("epoch "):
            self.ends.append(time.perf_counter())


def measure(side: int, channels: int, n: int, epochs: int, seed: int) -> dict:
    from detectors import GANomaly

    x = textures(n, side, channels, seed)
    clock = EpochClock()
    log = logging.getLogger("detectors.training")
    log.setLevel(logging.INFO)
    log.addHandler(clock)
    det = GANomaly(seed=seed, epochs=1 + epochs, patience=epochs + 2)
    started = time.perf_counter()
    det.fit(x)
    fit_s = time.perf_counter() - started
    log.removeHandler(clock)
    det.decision_function(x[:64])  # warm-up: trace the scoring graph once
    started = time.perf_counter()
    det.decision_function(x)
    score_s = time.perf_counter() - started
    train_s = clock.ends[-1] - clock.ends[0]
    return {
        "side": side,
        "channels": channels,
        "images": n,
        "epochs": epochs,
        "filters": det.conv_filters(),
        "fit_s": round(fit_s, 1),
        "train_images_per_s": round(n * epochs / train_s, 1),
        "score_images_per_s": round(n / score_s, 1),
    }


def cli_train(n: int, seed: int) -> dict:
    """Wall time of `anomaly train --images` at every default on ``n`` brain-MRI scans."""
    shared = ROOT.parent / "shared" / "datasets" / "images" / "brain_mri.npz"
    with np.load(shared, allow_pickle=False) as d:
        images = d["train_x"][:n]
    if len(images) < n:
        raise SystemExit(f"{shared} holds {len(images)} training scans, fewer than {n}")
    with tempfile.TemporaryDirectory() as work:
        np.savez(Path(work) / "train.npz", images=images)
        command = [sys.executable, "-m", "anomaly.cli", "train", f"{work}/train.npz", "--images"]
        command += ["--out", f"{work}/bundle", "--seed", str(seed), "--quiet"]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall_s = time.perf_counter() - started
        manifest = json.loads((Path(work) / "bundle" / "manifest.json").read_text())
    return {
        "images": n,
        "side": int(images.shape[1]),
        "epochs_run": manifest["training"]["epochs_run"],
        "wall_s": round(wall_s, 1),
        "within_10_min": wall_s <= 600,
        "cpu_count": os.cpu_count(),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sides", default="128,256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "imaging_cost.json")
    parser.add_argument(
        "--cli-images", type=int, default=0, help="Time `anomaly train --images` on N scans."
    )
    args = parser.parse_args()
    if args.cli_images:
        row = cli_train(args.cli_images, args.seed)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=2) + "\n")
        return
    import keras

    rows = []
    for side in map(int, args.sides.split(",")):
        for channels in (1, 3):
            row = measure(side, channels, args.images, args.epochs, args.seed)
            row["backend"] = keras.backend.backend()
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| side | channels | filters | train images/s | score images/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['side']} | {r['channels']} | {r['filters']} | {r['train_images_per_s']} "
            f"| {r['score_images_per_s']} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
