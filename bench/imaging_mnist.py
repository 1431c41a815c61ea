"""MNIST leave-one-digit-out with the convolutional GANomaly (protocol: shared/datasets/README.md).

For each anomaly digit d and seed s: the normal images (every other digit) of the MNIST test
set are split 60/40 with seed s; GANomaly trains on the 60 % part only (its early stopping,
score normaliser and latent statistics use a validation split carved out of that part); the
test set is the other 40 % normal plus every image of digit d. Reported: image-level ROC-AUC
and average precision of the combined score and of each component, per digit, mean over seeds.
No threshold, checkpoint or normalisation is chosen with test data: none is chosen at all
beyond what ``GANomaly.fit`` does on the training part.

Pixel-level check (MNIST has no pixel masks, so a proxy with a stated justification): the
strokes in which an anomalous digit differs from the most similar normal training digit
(its L2 nearest neighbour in the 60 % part) are the mask ``|x - nn| > 0.3``. GANomaly
reconstructs towards the normal data, so a heatmap that "concentrates on the strokes that
differ" should rank mask pixels above the rest. Reported per run, over up to 300 anomalous
test images: mean per-image pixel ROC-AUC of the residual |x - x_hat| against the mask, and
the share of residual mass inside the mask divided by the mask's share of the image
(concentration; 1 = no better than spread uniformly). Baseline: the same numbers for the
input's own ink (x), a heatmap that knows nothing of normality.

Runs on any Keras 3 backend (``KERAS_BACKEND=jax`` for the GPU run); only keras.ops is used
by the detector. Results go to ``--out``/results.jsonl (one line per run, appended as runs
finish) and ``--out``/summary.md.

    python bench/imaging_mnist.py --digits 0,1,2 --seeds 0 --epochs 3 --out bench/out/mnist
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "datasets" / "images"
COMPONENTS = ("score", "reconstruction", "latent", "discriminator")


def load_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10k MNIST test images (float32 NHWC in [0, 1], via anomaly.imaging) and labels."""
    from anomaly.imaging import PreprocessOptions, iter_batches

    options = PreprocessOptions(28, 28, 1)
    parts = [
        b.images for b in iter_batches([data_dir / "t10k-images-idx3-ubyte.gz"], options, 2048)
    ]
    with gzip.open(data_dir / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        raw = fh.read()
    labels = np.frombuffer(raw[8:], dtype=np.uint8).astype(np.int64)
    return np.concatenate(parts), labels


def split(labels: np.ndarray, digit: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices: train normals (60 %), test normals (40 %), test anomalies (all of ``digit``)."""
    normal = np.flatnonzero(labels != digit)
    order = np.random.default_rng(seed).permutation(normal)
    n_train = int(round(0.6 * len(order)))
    return np.sort(order[:n_train]), np.sort(order[n_train:]), np.flatnonzero(labels == digit)


def pixel_check(
    x: np.ndarray, residual: np.ndarray, train: np.ndarray, mask_level: float = 0.3
) -> dict[str, float]:
    """Heatmap localisation against the nearest-normal difference mask (see module docstring)."""
    from sklearn.metrics import roc_auc_score

    flat_x = x.reshape(len(x), -1).astype(np.float64)
    flat_t = train.reshape(len(train), -1).astype(np.float64)
    d2 = (flat_x**2).sum(1)[:, None] + (flat_t**2).sum(1)[None, :] - 2.0 * flat_x @ flat_t.T
    nn = flat_t[np.argmin(d2, axis=1)]
    masks = np.abs(flat_x - nn) > mask_level
    res = residual.reshape(len(x), -1).astype(np.float64)
    out: dict[str, list[float]] = {"res_auc": [], "ink_auc": [], "res_conc": [], "ink_conc": []}
    for i in range(len(x)):
        m = masks[i]
        if m.all() or not m.any():
            continue
        share = m.mean()
        for name, heat in (("res", res[i]), ("ink", flat_x[i])):
            out[f"{name}_auc"].append(roc_auc_score(m, heat))
            out[f"{name}_conc"].append((heat[m].sum() / max(heat.sum(), 1e-12)) / share)
    result = {k: float(np.mean(v)) for k, v in out.items()}
    result["images"] = len(out["res_auc"])
    result["mask_share"] = float(masks.mean())
    return result


def run_one(
    images: np.ndarray, labels: np.ndarray, digit: int, seed: int, epochs: int, batch: int
) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from detectors import GANomaly

    tr, te_norm, te_anom = split(labels, digit, seed)
    model = GANomaly(variant="conv", epochs=epochs, batch_size=batch, seed=seed)
    t0 = time.perf_counter()
    model.fit(images[tr])
    train_s = time.perf_counter() - t0
    test_idx = np.concatenate([te_norm, te_anom])
    y = np.concatenate([np.zeros(len(te_norm)), np.ones(len(te_anom))])
    comps = model.score_components(images[test_idx])
    result: dict = {
        "digit": digit,
        "seed": seed,
        "epochs_run": len(model.training_log_),
        "train_s": round(train_s, 1),
        "n_train": len(tr),
        "n_test_normal": len(te_norm),
        "n_test_anomalous": len(te_anom),
    }
    for name in COMPONENTS:
        values = comps.component(name)
        result[f"auc_{name}"] = float(roc_auc_score(y, values))
        result[f"ap_{name}"] = float(average_precision_score(y, values))
    pick = np.flatnonzero(y == 1)[:300]
    check = pixel_check(images[test_idx][pick], comps.contributions[pick], images[tr])
    result.update({f"pixel_{k}": v for k, v in check.items()})
    return result


def summarise(rows: list[dict]) -> str:
    """Markdown table: per digit, mean over seeds; then the mean over digits."""
    digits = sorted({r["digit"] for r in rows})
    cols = [f"auc_{c}" for c in COMPONENTS] + ["ap_score", "pixel_res_auc", "pixel_ink_auc"]
    cols += ["pixel_res_conc", "pixel_ink_conc"]
    lines = [
        "| digit | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    per_digit = []
    for d in digits:
        sub = [r for r in rows if r["digit"] == d]
        means = {c: float(np.mean([r[c] for r in sub])) for c in cols}
        per_digit.append(means)
        lines.append(f"| {d} | {len(sub)} | " + " | ".join(f"{means[c]:.3f}" for c in cols) + " |")
    overall = {c: float(np.mean([m[c] for m in per_digit])) for c in cols}
    lines.append("| **mean** | | " + " | ".join(f"**{overall[c]:.3f}**" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def example_report(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> None:
    """Train a bundle through the CLI (digit ``--example-digit`` left out, seed 0 split), score
    40 normal + 10 anomalous test digits and one truncated PNG, screenshot the report."""
    import subprocess

    from PIL import Image

    from anomaly.report import image_is_blank, screenshot

    digit, out = args.example_digit, args.out / "example"
    tr, te_norm, te_anom = split(labels, digit, 0)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "train.npz", images=(images[tr, :, :, 0] * 255).round().astype(np.uint8))
    scan = out / "scan"
    scan.mkdir(exist_ok=True)
    for i in list(te_norm[:40]) + list(te_anom[:10]):
        pixels = (images[i, :, :, 0] * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(scan / f"test{i:05d}_label{labels[i]}.png")
    broken = scan / f"test{te_norm[40]:05d}_label{labels[te_norm[40]]}.png"
    Image.fromarray((images[te_norm[40], :, :, 0] * 255).astype(np.uint8)).save(broken)
    broken.write_bytes(broken.read_bytes()[:60])
    cli = [sys.executable, "-m", "anomaly.cli"]
    bundle = out / "bundle"
    if not (bundle / "manifest.json").is_file():
        subprocess.run(
            [*cli, "train", str(out / "train.npz"), "--images", "--out", str(bundle)]
            + ["--epochs", str(args.epochs), "--target-fpr", "0.05", "--quiet"],
            check=True,
        )
    subprocess.run(
        [*cli, "score-images", "--bundle", str(bundle), str(scan), "--out", str(out / "report")],
        check=False,
    )
    shot = screenshot(out / "report" / "index.html", args.screenshot, 1100, 1000)
    with Image.open(shot) as img:
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(shot, optimize=True)
    print(f"screenshot {shot} blank={image_is_blank(shot)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mnist")
    parser.add_argument("--example-digit", type=int, default=None, help="Only the example report.")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "imaging_report.png")
    parser.add_argument(
        "--summarise-only", action="store_true", help="Only rebuild summary.md from results."
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if args.summarise_only:
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        (args.out / "summary.md").write_text(summarise(rows))
        print(summarise(rows))
        return

    import keras

    images, labels = load_mnist(args.data)
    if args.example_digit is not None:
        example_report(images, labels, args)
        return
    print(f"backend={keras.backend.backend()} images={images.shape}", flush=True)
    for digit in [int(d) for d in args.digits.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            row = run_one(images, labels, digit, seed, args.epochs, args.batch_size)
            row["backend"] = keras.backend.backend()
            row["epochs_max"] = args.epochs
            print(json.dumps(row), flush=True)
            with open(results, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    (args.out / "summary.md").write_text(summarise(rows))
    print(summarise(rows))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
