"""Image detection on three shared domains through the CLI at its defaults, beside plain anchors.

Domains and protocols (shared/datasets/README.md):
- ``mnist``: leave-one-digit-out. For anomaly digit d and seed s the other digits of the MNIST
  test set are split 60/40 with seed s; training uses the 60 % part only; the test set is the
  other 40 % plus every d.
- ``cifar10``: one class normal (Deep SVDD / GEOM protocol). Train on that class's
  ``train_images``; test on the whole test set, that class normal, the other nine anomalous.
  Seeds change the model's initialisation, not the split.
- ``brain_mri``: train on ``train_x`` (no tumour), test on ``test_x`` / ``test_y`` as given.

The detector runs as a user runs it: the training images are written as an NPZ of uint8,
``anomaly train TRAIN.npz --images --seed s --out BUNDLE`` trains with every default (the
bundle carves its own validation and calibration splits out of the training part), and
``anomaly score-images`` writes ``scores.csv``, whose score and component columns are read
back. ``--ablation`` also runs the same pipeline with ``--epochs 0``: randomly initialised
networks, everything else (banks, normaliser, self-check) the same, which shows what the
trained GAN adds. Nothing is chosen with test data.

Anchors on the same splits, fitted on the same training part:
- kNN (distance to the 5th nearest training image) on raw pixels, per-image
  unit-L2-normalised pixels and per-image z-scored pixels;
- IsolationForest (200 trees); PCA reconstruction error (90 % variance);
- a plain conv autoencoder of the detector's own encoder/decoder builders (same size, the
  detector's image epochs and batch 64, L1 loss, early stopping on a 15 % validation split),
  scored by its mean absolute reconstruction error.

Rows go to ``--out``/results.jsonl (one per run, appended as runs finish, so an interrupted
run resumes); ``--summarise-only`` rebuilds ``summary.md`` (the tables in
docs/benchmarks.md) and ``imaging_summary.json`` from it.

    python bench/imaging.py --domains brain_mri --seeds 0 --out bench/out/imaging
    python bench/imaging.py --ablation --out bench/out/imaging      # every domain, seed 0
    python bench/imaging.py --summarise-only --out bench/results/imaging
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "datasets" / "images"
DOMAINS = ("mnist", "cifar10", "brain_mri")
COMPONENTS = (
    "score",
    "encoder_knn",
    "discriminator_knn",
    "texture_knn",  # only bundles of the texture-bank trial (bench/results/imaging-texture)
    "reconstruction",
    "latent",
    "discriminator",
    "discriminator_map",
    "discriminator_rotation",
)
ANCHORS = ("knn_raw", "knn_unit", "knn_zscore", "iforest", "pca", "conv_ae")
CLI = [sys.executable, "-m", "anomaly.cli"]


@dataclass
class Task:
    """One train/test split of a domain: uint8 images (N, H, W[, 3]) and test labels."""

    domain: str
    name: str
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray


def _mnist(data: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(data / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        images = np.frombuffer(fh.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(data / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        labels = np.frombuffer(fh.read()[8:], np.uint8).astype(np.int64)
    return images, labels


def tasks(domain: str, data: Path, seed: int, only: set[str] | None) -> Iterator[Task]:
    """The protocol's tasks of ``domain`` for ``seed`` (``only``: task names to keep)."""
    if domain == "mnist":
        images, labels = _mnist(data)
        for digit in range(10):
            if only and str(digit) not in only:
                continue
            normal = np.flatnonzero(labels != digit)
            order = np.random.default_rng(seed).permutation(normal)
            n_train = int(round(0.6 * len(order)))
            test_normal, anomalous = np.sort(order[n_train:]), np.flatnonzero(labels == digit)
            yield Task(
                domain,
                str(digit),
                images[np.sort(order[:n_train])],
                images[np.concatenate([test_normal, anomalous])],
                np.r_[np.zeros(len(test_normal)), np.ones(len(anomalous))],
            )
    elif domain == "cifar10":
        with np.load(data / "cifar10.npz", allow_pickle=False) as d:
            train, train_y = d["train_images"], d["train_labels"]
            test, test_y, classes = d["test_images"], d["test_labels"], d["classes"]
        for c, cls in enumerate(classes):
            if only and str(cls) not in only:
                continue
            yield Task(domain, str(cls), train[train_y == c], test, (test_y != c).astype(float))
    elif domain == "brain_mri":
        with np.load(data / "brain_mri.npz", allow_pickle=False) as d:
            yield Task(domain, "tumour", d["train_x"], d["test_x"], d["test_y"].astype(float))
    else:
        raise ValueError(f"unknown domain {domain!r}")


def detector_scores(
    task: Task, seed: int, work: Path, epochs: int | None, keep: bool = False
) -> tuple[dict[str, np.ndarray], float, float]:
    """Train and score through the CLI at its defaults (``epochs`` 0: the random ablation);
    returns (scores by column, train s, score s). ``keep``: the scores and the bundle's
    manifest stay in ``work``/kept (for studying how components combine)."""
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left behind
    work.mkdir(parents=True)
    np.savez(work / "train.npz", images=task.train)
    np.savez(work / "test.npz", images=task.test)
    bundle, report = work / "bundle", work / "report"
    extra = [] if epochs is None else ["--epochs", str(epochs)]
    started = time.perf_counter()
    subprocess.run(
        [*CLI, "train", str(work / "train.npz"), "--images", "--out", str(bundle)]
        + ["--seed", str(seed), "--quiet", *extra],
        check=True,
    )
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(
        [*CLI, "score-images", "--bundle", str(bundle), str(work / "test.npz")]
        + ["--out", str(report), "--quiet"],
        check=True,
    )
    score_s = time.perf_counter() - started
    with open(report / "scores.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["frame"]))
    if keep:
        kept = work.parent / "kept" / work.name
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy(report / "scores.csv", kept / "scores.csv")
        shutil.copy(bundle / "manifest.json", kept / "manifest.json")
        np.save(kept / "labels.npy", task.labels)
    shutil.rmtree(work)  # a bundle's memory banks take tens of MB; many runs add up
    if len(rows) != len(task.test):
        raise RuntimeError(f"scored {len(rows)} of {len(task.test)} test images")
    columns = [c for c in COMPONENTS if c in rows[0]]
    return {c: np.array([float(r[c]) for r in rows]) for c in columns}, train_s, score_s


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, C]) -> float32 NHWC in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    return x[..., None] if x.ndim == 3 else x


def conv_autoencoder_scores(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    """A plain conv autoencoder built from the detector's own encoder/decoder builders."""
    import keras

    from detectors import networks
    from detectors.ganomaly import IMAGE_EPOCHS
    from detectors.training import early_stopping, seed_everything, validation_split

    seed_everything(seed)
    h, ch = train.shape[1], train.shape[3]
    side = networks.padded_side(h, train.shape[2])
    pad = (side - h) // 2, side - h - (side - h) // 2

    def padded(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), pad, pad, (0, 0)))

    fit_part, val_part = validation_split(padded(train), 0.15, seed)
    inputs = keras.Input((side, side, ch))
    encoder = networks.conv_encoder(side, ch, 100, 32, "ae_encoder")
    decoder = networks.conv_decoder(side, ch, 100, 32, "ae_decoder")
    model = keras.Model(inputs, decoder(encoder(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(2e-4, beta_1=0.5), loss="mae")
    model.fit(
        fit_part,
        fit_part,
        validation_data=(val_part, val_part),
        epochs=IMAGE_EPOCHS,
        batch_size=64,
        verbose=0,
        callbacks=[early_stopping("val_loss", 5)],
    )
    test_p = padded(test)
    recon = np.concatenate(
        [
            np.asarray(model.predict_on_batch(test_p[i : i + 256]))
            for i in range(0, len(test_p), 256)
        ]
    )
    return np.abs(recon - test_p).reshape(len(test_p), -1).mean(axis=1)


def kth_neighbour_distance(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    """Distance to the k-th nearest training row (exact, one BLAS product per chunk)."""
    sq = np.einsum("ij,ij->i", train, train)
    out = []
    for i in range(0, len(test), 1024):
        q = test[i : i + 1024]
        d = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * (q @ train.T) + sq[None]
        out.append(np.sqrt(np.maximum(np.partition(d, k - 1, axis=1)[:, k - 1], 0.0)))
    return np.concatenate(out)


def anchor_scores(
    train: np.ndarray, test: np.ndarray, seed: int, conv_ae: bool = True
) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest

    flat_tr = train.reshape(len(train), -1)
    flat_te = test.reshape(len(test), -1)

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    def zscore(a: np.ndarray) -> np.ndarray:
        return (a - a.mean(axis=1, keepdims=True)) / (a.std(axis=1, keepdims=True) + 1e-6)

    out = {
        "knn_raw": kth_neighbour_distance(flat_tr, flat_te),
        "knn_unit": kth_neighbour_distance(unit(flat_tr), unit(flat_te)),
        "knn_zscore": kth_neighbour_distance(zscore(flat_tr), zscore(flat_te)),
    }
    out["iforest"] = (
        -IsolationForest(n_estimators=200, random_state=seed).fit(flat_tr).score_samples(flat_te)
    )
    pca = PCA(n_components=0.9, random_state=seed).fit(flat_tr)
    out["pca"] = ((flat_te - pca.inverse_transform(pca.transform(flat_te))) ** 2).sum(axis=1)
    if conv_ae:
        out["conv_ae"] = conv_autoencoder_scores(train, test, seed)
    return out


def run_one(
    task: Task, seed: int, work: Path, ablation: bool, conv_ae: bool, keep: bool = False
) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, train_s, score_s = detector_scores(task, seed, work, None, keep)
    row: dict = {
        "domain": task.domain,
        "task": task.name,
        "seed": seed,
        "train_s": round(train_s, 1),
        "score_s": round(score_s, 1),
        "n_train": len(task.train),
        "n_test_normal": int((task.labels == 0).sum()),
        "n_test_anomalous": int((task.labels == 1).sum()),
        "image_shape": list(task.train.shape[1:]),
    }
    if ablation:
        random, _, _ = detector_scores(task, seed, work, 0)
        scores.update({f"random_{k}": v for k, v in random.items()})
    started = time.perf_counter()
    scores.update(anchor_scores(as_float(task.train), as_float(task.test), seed, conv_ae))
    row["anchors_s"] = round(time.perf_counter() - started, 1)
    for name, values in scores.items():
        row[f"auc_{name}"] = float(roc_auc_score(task.labels, values))
        row[f"ap_{name}"] = float(average_precision_score(task.labels, values))
    return row


# --- summaries --------------------------------------------------------------------------------
def _task_means(rows: list[dict], domain: str, col: str) -> dict[str, float]:
    """Per task of ``domain``: the mean of ``col`` over the seeds that ran it."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["domain"] == domain and col in r:
            out.setdefault(r["task"], []).append(r[col])
    return {t: float(np.mean(v)) for t, v in out.items()}


def _table(rows: list[dict], domain: str, names: tuple[str, ...], metric: str) -> list[str]:
    """Tasks x columns of ``domain``; a column a task did not run shows "-", and the mean and
    worst rows are over the tasks that ran it."""
    sub = [r for r in rows if r["domain"] == domain]
    cols = [f"{metric}_{n}" for n in names if any(f"{metric}_{n}" in r for r in sub)]
    per = {c: _task_means(sub, domain, c) for c in cols}
    order = list(dict.fromkeys(r["task"] for r in sub))
    heads = [c.split("_", 1)[1] for c in cols]
    lines = ["| task | seeds | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(cols)]

    def cell(c: str, t: str) -> str:
        return f"{per[c][t]:.3f}" if t in per[c] else "-"

    for t in order:
        seeds = ",".join(str(r["seed"]) for r in sub if r["task"] == t)
        lines.append(f"| {t} | {seeds} | " + " | ".join(cell(c, t) for c in cols) + " |")
    if len(order) > 1:
        mean = {c: np.mean(list(per[c].values())) for c in cols}
        worst = {c: np.min(list(per[c].values())) for c in cols}
        lines.append("| **mean** | | " + " | ".join(f"**{mean[c]:.3f}**" for c in cols) + " |")
        lines.append("| worst | | " + " | ".join(f"{worst[c]:.3f}" for c in cols) + " |")
    return lines


def summarise(rows: list[dict]) -> tuple[str, dict]:
    """Markdown tables per domain and the machine-readable summary (imaging_summary.json)."""
    out, summary = [], {}
    for domain in [d for d in DOMAINS if any(r["domain"] == d for r in rows)]:
        sub = [r for r in rows if r["domain"] == domain]
        seeds = sorted({r["seed"] for r in sub})
        out += [f"#### {domain} ({len(sub)} runs; cells are means over the seeds run)", ""]
        out += ["ROC-AUC of the score and of each component:", ""]
        out += _table(rows, domain, COMPONENTS, "auc")
        if any("auc_random_score" in r for r in sub):
            out += ["", "Ablation, ROC-AUC: trained networks vs randomly initialised ones:", ""]
            out += _table(rows, domain, ("score", *(f"random_{c}" for c in COMPONENTS)), "auc")
        out += ["", "ROC-AUC, detector vs anchors:", ""]
        out += _table(rows, domain, ("score", *ANCHORS), "auc")
        out += ["", "Average precision, detector vs anchors:", ""]
        out += _table(rows, domain, ("score", *ANCHORS), "ap")
        per_seed = [
            f"{np.mean([r['auc_score'] for r in sub if r['seed'] == s]):.3f}" for s in seeds
        ]
        train_s = [r["train_s"] for r in sub]
        out += [
            "",
            f"Score mean per seed ({'/'.join(map(str, seeds))}): {' / '.join(per_seed)}. "
            f"`anomaly train` wall time per run: median {np.median(train_s):.0f} s "
            f"(min {min(train_s):.0f}, max {max(train_s):.0f}) for "
            f"{sub[0]['n_train']} training images of {tuple(sub[0]['image_shape'])}.",
            "",
        ]
        score = _task_means(rows, domain, "auc_score")
        summary[domain] = {
            "default": round(float(np.mean(list(score.values()))), 4),
            "worst": round(float(np.min(list(score.values()))), 4),
            "anchors": {
                a: round(float(np.mean(list(means.values()))), 4)
                for a in ANCHORS
                if (means := _task_means(rows, domain, f"auc_{a}"))
            },
            "seeds": seeds,
            "tasks": len(score),
        }
    return "\n".join(out) + "\n", summary


def write_summaries(out: Path, summary_json: Path) -> None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
    text, summary = summarise(rows)
    (out / "summary.md").write_text(text)
    summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--tasks", default="", help="Only these task names (digits, classes).")
    parser.add_argument("--ablation", action="store_true", help="Also run --epochs 0.")
    parser.add_argument(
        "--no-conv-ae",
        action="store_true",
        help="Skip the conv-autoencoder anchor (it trains as long as the detector).",
    )
    parser.add_argument(
        "--keep-scores",
        action="store_true",
        help="Keep each run's scores.csv and manifest under OUT/runs/kept.",
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "imaging")
    parser.add_argument(
        "--summary-json",
        type=Path,
        default=ROOT / "bench" / "results" / "imaging_summary.json",
    )
    parser.add_argument(
        "--summarise-only", action="store_true", help="Only rebuild the summaries from results."
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if not args.summarise_only:
        import keras

        done = set()
        if results.is_file():
            done = {
                (r["domain"], r["task"], r["seed"])
                for r in map(json.loads, results.read_text().splitlines())
            }
        only = set(filter(None, args.tasks.split(",")))
        for seed in [int(s) for s in args.seeds.split(",")]:
            for domain in args.domains.split(","):
                for task in tasks(domain, args.data, seed, only):
                    if (domain, task.name, seed) in done:
                        continue
                    work = args.out / "runs" / f"{domain}_{task.name}_s{seed}"
                    row = run_one(
                        task, seed, work, args.ablation, not args.no_conv_ae, args.keep_scores
                    )
                    row["backend"] = keras.backend.backend()
                    print(json.dumps(row), flush=True)
                    with open(results, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
    write_summaries(args.out, args.summary_json)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
