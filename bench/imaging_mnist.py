"""MNIST leave-one-digit-out through the CLI at its defaults, beside plain anchors.

Protocol (shared/datasets/README.md): for each anomaly digit d and seed s, the normal images
(every other digit) of the MNIST test set are split 60/40 with seed s; everything trains on
the 60 % part only; the test set is the other 40 % normal plus every image of digit d.

The detector runs exactly as a user runs it: the 60 % part is written as an NPZ of uint8
images, ``anomaly train TRAIN.npz --images --seed s --out BUNDLE`` trains with every default
(the bundle carves its own validation and calibration splits out of that part), and
``anomaly score-images --bundle BUNDLE TEST.npz --out REPORT`` writes ``scores.csv``, whose
score and component columns are read back. Nothing is chosen with test data.

Anchors on the same splits (scikit-learn / Keras, fitted on the same 60 % part):
- kNN: distance to the 5th nearest training image, on raw pixels and on per-image
  unit-L2-normalised pixels;
- IsolationForest (200 trees) on raw pixels; PCA reconstruction error (90 % variance);
- a plain convolutional autoencoder of the detector's own encoder/decoder builders (same
  size, the detector's 10 image epochs and batch 64, L1 loss, early stopping on a 15 %
  validation split), scored by its mean absolute reconstruction error.

Image-level ROC-AUC and average precision of every score, per digit and seed, go to
``--out``/results.jsonl (one line per run, appended as runs finish); ``--summarise-only``
rebuilds the tables for docs/benchmarks.md from it.

    python bench/imaging_mnist.py --digits 0,1 --seeds 0 --out bench/out/mnist
    python bench/imaging_mnist.py --digits 1,9,7,4,0,2,3,5,6,8 --out bench/out/mnist
                                                    # the full protocol (2-core CPU: ~1.5 h)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "datasets" / "images"
COMPONENTS = (
    "score",
    "encoder_knn",
    "discriminator_knn",
    "reconstruction",
    "latent",
    "discriminator",
)
ANCHORS = ("knn_raw", "knn_unit", "iforest", "pca", "conv_ae")
CLI = [sys.executable, "-m", "anomaly.cli"]


def load_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10k MNIST test images (float32 NHWC in [0, 1], anomaly.imaging.readers) and labels."""
    from anomaly.imaging.readers import PreprocessOptions, iter_batches

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


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (images[..., 0] * 255.0).round().astype(np.uint8)


def detector_scores(
    images: np.ndarray,
    tr: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    work: Path,
    intensity: str = "none",
) -> tuple[dict[str, np.ndarray], float]:
    """Train and score through the CLI at its defaults (``intensity`` aside, for the study of
    that one option); returns (scores by column, train s)."""
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left behind
    work.mkdir(parents=True)
    np.savez(work / "train.npz", images=to_uint8(images[tr]))
    np.savez(work / "test.npz", images=to_uint8(images[test_idx]))
    bundle, report = work / "bundle", work / "report"
    started = time.perf_counter()
    subprocess.run(
        [*CLI, "train", str(work / "train.npz"), "--images", "--out", str(bundle)]
        + ["--seed", str(seed), "--intensity", intensity, "--quiet"],
        check=True,
    )
    train_s = time.perf_counter() - started
    subprocess.run(
        [*CLI, "score-images", "--bundle", str(bundle), str(work / "test.npz")]
        + ["--out", str(report), "--quiet"],
        check=True,
    )
    with open(report / "scores.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["frame"]))
    shutil.rmtree(work)  # a bundle's memory banks take tens of MB; 30 runs add up
    if len(rows) != len(test_idx):
        raise RuntimeError(f"scored {len(rows)} of {len(test_idx)} test images")
    return {c: np.array([float(r[c]) for r in rows]) for c in COMPONENTS}, train_s


def conv_autoencoder_scores(
    train: np.ndarray, test: np.ndarray, seed: int, epochs: int = 10
) -> np.ndarray:
    """A plain conv autoencoder built from the detector's own encoder/decoder builders."""
    import keras

    from detectors import networks
    from detectors.training import early_stopping, seed_everything, validation_split

    seed_everything(seed)
    side = networks.padded_side(*train.shape[1:3])
    pad = (side - train.shape[1]) // 2, side - train.shape[1] - (side - train.shape[1]) // 2

    def padded(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), pad, pad, (0, 0)))

    fit_part, val_part = validation_split(padded(train), 0.15, seed)
    inputs = keras.Input((side, side, 1))
    encoder = networks.conv_encoder(side, 1, 100, 32, "ae_encoder")
    decoder = networks.conv_decoder(side, 1, 100, 32, "ae_decoder")
    model = keras.Model(inputs, decoder(encoder(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss="mae")
    model.fit(
        fit_part,
        fit_part,
        validation_data=(val_part, val_part),
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[early_stopping("val_loss", 5)],
    )
    test_p = padded(test)
    recon = np.concatenate(
        [
            np.asarray(model.predict_on_batch(test_p[i : i + 512]))
            for i in range(0, len(test_p), 512)
        ]
    )
    return np.abs(recon - test_p).reshape(len(test_p), -1).mean(axis=1)


def anchor_scores(train: np.ndarray, test: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors

    flat_tr = train.reshape(len(train), -1)
    flat_te = test.reshape(len(test), -1)

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    out = {}
    for name, (a, b) in {
        "knn_raw": (flat_tr, flat_te),
        "knn_unit": (unit(flat_tr), unit(flat_te)),
    }.items():
        out[name] = NearestNeighbors(n_neighbors=5).fit(a).kneighbors(b)[0][:, 4]
    out["iforest"] = (
        -IsolationForest(n_estimators=200, random_state=seed).fit(flat_tr).score_samples(flat_te)
    )
    pca = PCA(n_components=0.9, random_state=seed).fit(flat_tr)
    out["pca"] = ((flat_te - pca.inverse_transform(pca.transform(flat_te))) ** 2).sum(axis=1)
    out["conv_ae"] = conv_autoencoder_scores(train, test, seed)
    return out


def run_one(
    images: np.ndarray,
    labels: np.ndarray,
    digit: int,
    seed: int,
    work: Path,
    intensity: str = "none",
) -> dict:
    """One digit and seed; the anchors only at the default intensity (they do not use it)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    tr, te_norm, te_anom = split(labels, digit, seed)
    test_idx = np.concatenate([te_norm, te_anom])
    y = np.concatenate([np.zeros(len(te_norm)), np.ones(len(te_anom))])
    scores, train_s = detector_scores(
        images, tr, test_idx, seed, work / f"d{digit}_s{seed}", intensity
    )
    started = time.perf_counter()
    if intensity == "none":
        scores.update(anchor_scores(images[tr], images[test_idx], seed))
    result: dict = {
        "digit": digit,
        "seed": seed,
        "train_s": round(train_s, 1),
        "anchors_s": round(time.perf_counter() - started, 1),
        "n_train": len(tr),
        "n_test_normal": len(te_norm),
        "n_test_anomalous": len(te_anom),
        "intensity": intensity,
    }
    for name, values in scores.items():
        result[f"auc_{name}"] = float(roc_auc_score(y, values))
        result[f"ap_{name}"] = float(average_precision_score(y, values))
    return result


def summarise(rows: list[dict]) -> str:
    """Markdown tables: per digit (mean over seeds) the detector's score and components, then
    the score against every anchor; means, worst digit and the seed spread."""
    digits = sorted({r["digit"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})

    def table(names: tuple[str, ...], metric: str) -> list[str]:
        cols = [f"{metric}_{n}" for n in names]
        lines = [
            "| digit | seeds | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        per_digit = []
        for d in digits:
            sub = [r for r in rows if r["digit"] == d]
            means = {c: float(np.mean([r[c] for r in sub])) for c in cols}
            per_digit.append(means)
            seeds_run = ",".join(str(r["seed"]) for r in sorted(sub, key=lambda r: r["seed"]))
            lines.append(
                f"| {d} | {seeds_run} | " + " | ".join(f"{means[c]:.3f}" for c in cols) + " |"
            )
        mean = {c: float(np.mean([m[c] for m in per_digit])) for c in cols}
        worst = {c: float(np.min([m[c] for m in per_digit])) for c in cols}
        lines.append("| **mean** | | " + " | ".join(f"**{mean[c]:.3f}**" for c in cols) + " |")
        lines.append("| worst digit | | " + " | ".join(f"{worst[c]:.3f}" for c in cols) + " |")
        return lines

    out = [f"Runs: {len(rows)} (digit x seed); cells are means over the seeds run.", ""]
    out += ["Image ROC-AUC of the detector's score and of each component:", ""]
    out += table(COMPONENTS, "auc")
    out += ["", "Image ROC-AUC, detector vs anchors:", ""]
    out += table(("score", *ANCHORS), "auc")
    out += ["", "Average precision, detector vs anchors:", ""]
    out += table(("score", *ANCHORS), "ap")
    spread = []
    for name in ("score", *ANCHORS):
        per_seed = []
        for s in seeds:
            sub = [r[f"auc_{name}"] for r in rows if r["seed"] == s]
            per_seed.append(f"{np.mean(sub):.3f} ({len(sub)})")
        repeated = [d for d in digits if sum(r["digit"] == d for r in rows) > 1]
        sds = [float(np.std([r[f"auc_{name}"] for r in rows if r["digit"] == d])) for d in repeated]
        spread.append(
            f"| {name} | {' / '.join(per_seed)} | {max(sds):.3f} |"
            if sds
            else f"| {name} | {' / '.join(per_seed)} | - |"
        )
    out += [
        "",
        "Seed spread (ROC-AUC; per seed: mean over the digits that seed ran, and their count):",
        "",
        f"| score | per seed {'/'.join(map(str, seeds))} | largest per-digit std over seeds |",
        "|---|---|---|",
        *spread,
    ]
    return "\n".join(out) + "\n"


def example_report(images: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> None:
    """Train a bundle through the CLI (digit ``--example-digit`` left out, seed 0 split), score
    40 normal + 10 anomalous test digits and one truncated PNG, screenshot the report."""
    import subprocess

    from PIL import Image

    from testsupport.browser import image_is_blank, screenshot

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
    parser.add_argument("--epochs", type=int, default=10, help="Example report only.")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mnist")
    parser.add_argument("--example-digit", type=int, default=None, help="Only the example report.")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "imaging_report.png")
    parser.add_argument(
        "--summarise-only", action="store_true", help="Only rebuild summary.md from results."
    )
    parser.add_argument(
        "--intensity",
        choices=("none", "stretch", "zscore"),
        default="none",
        help="Train the detector with this --intensity (anchors skipped unless none).",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=ROOT / "bench" / "results" / "mnist" / "results.jsonl",
        help="Default-intensity rows that --intensity runs are compared with.",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if args.summarise_only:
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        summary = summarise(rows) if args.intensity == "none" else intensity_summary(rows, args)
        (args.out / "summary.md").write_text(summary)
        print(summary)
        return

    import keras

    images, labels = load_mnist(args.data)
    if args.example_digit is not None:
        example_report(images, labels, args)
        return
    print(f"backend={keras.backend.backend()} images={images.shape}", flush=True)
    done = set()
    if results.is_file():
        done = {(r["digit"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())}
    # seed-major: a partial run still covers every digit for the first seeds
    for seed in [int(s) for s in args.seeds.split(",")]:
        for digit in [int(d) for d in args.digits.split(",")]:
            if (digit, seed) in done:
                continue
            row = run_one(images, labels, digit, seed, args.out / "runs", args.intensity)
            row["backend"] = keras.backend.backend()
            print(json.dumps(row), flush=True)
            with open(results, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    summary = summarise(rows) if args.intensity == "none" else intensity_summary(rows, args)
    (args.out / "summary.md").write_text(summary)
    print(summary)


def intensity_summary(rows: list[dict], args: argparse.Namespace) -> str:
    """The detector's score AUROC per digit at ``args.intensity`` beside the default runs
    (``--baseline``) of the same digits and seeds."""
    base = {
        (r["digit"], r["seed"]): r
        for r in map(json.loads, args.baseline.read_text().splitlines())
        if r.get("intensity", "none") == "none"
    }
    pairs = [(base[(r["digit"], r["seed"])], r) for r in rows if (r["digit"], r["seed"]) in base]
    lines = [
        f"| digit | seeds | none | {args.intensity} |",
        "|---|---|---|---|",
    ]
    for d in sorted({b["digit"] for b, _ in pairs}):
        sub = [(b, r) for b, r in pairs if b["digit"] == d]
        seeds = ",".join(str(b["seed"]) for b, _ in sub)
        none_auc = np.mean([b["auc_score"] for b, _ in sub])
        mode_auc = np.mean([r["auc_score"] for _, r in sub])
        lines.append(f"| {d} | {seeds} | {none_auc:.3f} | {mode_auc:.3f} |")
    means = [np.mean([p[i]["auc_score"] for p in pairs]) for i in (0, 1)]
    worst = [
        min(
            np.mean([p[i]["auc_score"] for p in pairs if p[0]["digit"] == d])
            for d in {b["digit"] for b, _ in pairs}
        )
        for i in (0, 1)
    ]
    lines.append(f"| **mean** | | **{means[0]:.3f}** | **{means[1]:.3f}** |")
    lines.append(f"| **worst digit** | | **{worst[0]:.3f}** | **{worst[1]:.3f}** |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
