"""Detection quality on real tabular data under the shared protocol, through the CLI.

For seeds 0, 1, 2: split the normal rows 60/40; everything is fitted on the 60 % normal
part only; the test part (the other 40 % normal plus every anomaly) is scored once. ROC-AUC
and average precision, mean over seeds, and the seed-to-seed standard deviation.

The detector runs as a user runs it, at every default: the 60 % part is written as an NPZ,
``anomaly train TRAIN.npz --seed s --out BUNDLE`` (the bundle splits it again into train /
validation / calibration), then ``anomaly score --bundle BUNDLE TEST.npz --out scores.csv``;
the score and component columns are read back. No dataset gets its own flag (the fraud
sample's Amount is not log-transformed, for the detector or the anchors).

Anchors (same split, a standard scaler fitted on the same 60 % part): IsolationForest (200
trees), kNN (mean distance to the 5 nearest), PCA reconstruction (90 % variance), one-class
SVM (nu 0.05, up to 5,000 rows), a plain dense autoencoder built from the detector's own
dense encoder/decoder (hidden 64-32, latent d/2, 15 epochs, batch 64, MSE, early stopping
on a 15 % validation split), scored by its mean absolute reconstruction error, and PyOD's
ECOD and COPOD at their defaults (``pip install -e '.[bench]'``).

    python bench/tabular.py                                   # everything, writes bench/out
    python bench/tabular.py --datasets fraud,cardio --detectors ganomaly,iforest --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("ANOMALY_DATASETS", ROOT.parent / "shared" / "datasets"))
CLI = [sys.executable, "-m", "anomaly.cli"]

DATASETS = {
    "fraud": "fraud/creditcard_sample.csv",
    "cardio": "tabular/6_cardio.npz",
    "thyroid": "tabular/38_thyroid.npz",
    "satimage-2": "tabular/31_satimage-2.npz",
    "shuttle": "tabular/32_shuttle.npz",
    "mnist-odds": "tabular/24_mnist.npz",
    # the 16 ADBench "Classical" sets added to ../shared later (issue 21)
    "breastw": "tabular/4_breastw.npz",
    "fault": "tabular/12_fault.npz",
    "glass": "tabular/14_glass.npz",
    "ionosphere": "tabular/18_Ionosphere.npz",
    "letter": "tabular/20_letter.npz",
    "musk": "tabular/25_musk.npz",
    "optdigits": "tabular/26_optdigits.npz",
    "pageblocks": "tabular/27_PageBlocks.npz",
    "pendigits": "tabular/28_pendigits.npz",
    "pima": "tabular/29_Pima.npz",
    "spambase": "tabular/35_SpamBase.npz",
    "stamps": "tabular/37_Stamps.npz",
    "vowels": "tabular/40_vowels.npz",
    "waveform": "tabular/41_Waveform.npz",
    "wilt": "tabular/44_Wilt.npz",
    "yeast": "tabular/47_yeast.npz",
}
ANCHORS = ("iforest", "knn", "pca", "ocsvm", "dense_ae", "ecod", "copod")


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y); the fraud sample's features are V1..V28 and Amount, as in ADBench."""
    path = DATA / DATASETS[name]
    if path.suffix == ".csv":
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
        cols = [f"V{i}" for i in range(1, 29)] + ["Amount"]
        X = np.array([[float(r[c]) for c in cols] for r in rows])
        y = np.array([int(float(r["Class"])) for r in rows])
        return X, y
    with np.load(path) as data:
        return data["X"].astype(np.float64), data["y"].astype(int)


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = int(round(0.6 * len(normal)))
    test = np.concatenate([normal[n_train:], np.flatnonzero(y == 1)])
    return normal[:n_train], test


def detector_scores(
    X_train: np.ndarray, X_test: np.ndarray, seed: int, work: Path
) -> tuple[dict[str, np.ndarray], dict]:
    """``anomaly train`` + ``anomaly score`` at their defaults; (columns, timing facts)."""
    from anomaly.bundle.describe import left_out_of_score, stability_events

    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "train.npz", X=X_train)
    np.savez(work / "test.npz", X=X_test)
    bundle = work / "bundle"
    started = time.perf_counter()
    subprocess.run(
        [*CLI, "train", str(work / "train.npz"), "--out", str(bundle), "--seed", str(seed)]
        + ["--quiet"],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    manifest = json.loads((bundle / "manifest.json").read_text())
    log = manifest["training"]["log"]
    events, left_out = stability_events(log), left_out_of_score(log)
    subprocess.run(
        [*CLI, "score", "--bundle", str(bundle), str(work / "test.npz")]
        + ["--out", str(work / "scores.csv")],
        check=True,
        capture_output=True,
    )
    with open(work / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != len(X_test):
        raise RuntimeError(f"scored {len(rows)} of {len(X_test)} rows")
    names = ["score", *manifest["score"]["components"]]
    facts = {
        "train_wall_s": round(wall, 2),
        "fit_s": manifest["training"]["seconds"],
        "rows_given": len(X_train),
        "events": events,
        "left_out": left_out,
    }
    return {n: np.array([float(r[n]) for r in rows]) for n in names}, facts


def dense_autoencoder_scores(A: np.ndarray, B: np.ndarray, seed: int) -> np.ndarray:
    import keras

    from detectors import networks
    from detectors.training import early_stopping, seed_everything, validation_split

    seed_everything(seed)
    dim = A.shape[1]
    latent = max(4, dim // 2)
    fit_part, val_part = validation_split(A.astype("float32"), 0.15, seed)
    inputs = keras.Input((dim,))
    encoder = networks.dense_encoder(dim, latent, (64, 32), "ae_encoder")
    decoder = networks.dense_decoder(latent, dim, (64, 32), "ae_decoder")
    model = keras.Model(inputs, decoder(encoder(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(
        fit_part,
        fit_part,
        validation_data=(val_part, val_part),
        epochs=15,
        batch_size=64,
        verbose=0,
        callbacks=[early_stopping("val_loss", 5)],
    )
    recon = np.asarray(model.predict(B.astype("float32"), batch_size=4096, verbose=0))
    return np.abs(recon - B).mean(axis=1)


def anchor_scores(kind: str, X_train: np.ndarray, X_test: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors
    from sklearn.svm import OneClassSVM

    centre, scale = X_train.mean(axis=0), X_train.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    A, B = (X_train - centre) / scale, (X_test - centre) / scale
    if kind == "iforest":
        return -IsolationForest(n_estimators=200, random_state=seed).fit(A).score_samples(B)
    if kind == "pca":
        pca = PCA(n_components=0.9, random_state=seed).fit(A)
        return ((B - pca.inverse_transform(pca.transform(B))) ** 2).sum(axis=1)
    if kind == "knn":
        return NearestNeighbors(n_neighbors=5).fit(A).kneighbors(B)[0].mean(axis=1)
    if kind == "ocsvm":
        sub = A[np.random.default_rng(seed).permutation(len(A))[:5000]]
        return -OneClassSVM(gamma="scale", nu=0.05).fit(sub).score_samples(B)
    if kind == "dense_ae":
        return dense_autoencoder_scores(A, B, seed)
    if kind in ("ecod", "copod"):
        # PyOD (the `bench` extra): parameter-free empirical-copula detectors, ADBench's
        # strongest cheap baselines on these sets
        from pyod.models.copod import COPOD
        from pyod.models.ecod import ECOD

        return (ECOD() if kind == "ecod" else COPOD()).fit(A).decision_function(B)
    raise ValueError(kind)


# The key under which bench/tabular_semi.py adds its figures to the tabular summary
SEMI_SUPERVISED = "semi_supervised"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--detectors", default=",".join(("ganomaly", *ANCHORS)))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "tabular.json")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    if args.summarise_only:
        results = json.loads(args.out.read_text())["results"]
        print(summarise(results))
        summary = args.out.with_name(args.out.stem + "_summary.json")
        figures = standing(results)[1]
        if summary.is_file():  # bench/tabular_semi.py keeps its figures in the same file
            semi = json.loads(summary.read_text()).get(SEMI_SUPERVISED)
            figures.update({SEMI_SUPERVISED: semi} if semi else {})
        summary.write_text(json.dumps(figures, indent=1) + "\n")
        return
    import keras

    results = json.loads(args.out.read_text())["results"] if args.out.is_file() else []
    done = {(r["dataset"], r["detector"], r["seed"]) for r in results}
    work_root = Path(tempfile.mkdtemp(prefix="anomaly-tabular-"))
    for dataset in args.datasets.split(","):
        X, y = load(dataset)
        for detector in args.detectors.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (dataset, detector, seed) in done:
                    continue
                train, test = split(y, seed)
                started = time.perf_counter()
                facts: dict = {}
                if detector == "ganomaly":
                    work = work_root / f"{dataset}-{seed}"
                    scores, facts = detector_scores(X[train], X[test], seed, work)
                    shutil.rmtree(work)
                else:
                    scores = {"score": anchor_scores(detector, X[train], X[test], seed)}
                seconds = time.perf_counter() - started
                for name, s in scores.items():
                    row = {
                        "dataset": dataset,
                        "detector": detector,
                        "output": name,
                        "seed": seed,
                        "roc_auc": float(roc_auc_score(y[test], s)),
                        "average_precision": float(average_precision_score(y[test], s)),
                        "seconds": round(seconds, 2),
                        **facts,
                    }
                    results.append(row)
                    print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(
                    json.dumps({"backend": keras.backend.backend(), "results": results}, indent=1)
                )
    print(summarise(results))


def _cell(rows: list[dict], metric: str) -> float:
    return float(np.mean([r[metric] for r in rows]))


def _ranks(values: list[float]) -> list[float]:
    """Rank 1 = highest; ties share the mean of their ranks."""
    order = sorted(values, reverse=True)
    return [float(np.mean([i + 1 for i, v in enumerate(order) if v == value])) for value in values]


def standing(results: list[dict], detector: str = "ganomaly") -> tuple[list[str], dict]:
    """Markdown lines and a summary dict: per set, ``detector``'s mean ROC-AUC against its
    best anchor (the gap) and its rank among everything run; mean rank per detector."""
    scores = [r for r in results if r["output"] == "score"]
    detectors = list(dict.fromkeys(r["detector"] for r in scores))
    datasets = [
        ds
        for ds in dict.fromkeys(r["dataset"] for r in scores)
        if all(any((r["dataset"], r["detector"]) == (ds, d) for r in scores) for d in detectors)
    ]

    def cell(ds: str, d: str, metric: str) -> float:
        """``d``'s mean over seeds on ``ds``."""
        return _cell([r for r in scores if (r["dataset"], r["detector"]) == (ds, d)], metric)

    def mean_metric(metric: str, d: str) -> float:
        """``d``'s mean over the sets of its mean over seeds."""
        return float(np.mean([cell(ds, d, metric) for ds in datasets]))

    auc = {(ds, d): cell(ds, d, "roc_auc") for ds in datasets for d in detectors}
    ranks: dict[str, list[float]] = {d: [] for d in detectors}
    lines = [
        f"Where {detector} stands per set (ROC-AUC, mean over seeds; rank among all "
        f"{len(detectors)}, 1 = best):",
        "",
        f"| dataset | {detector} | best anchor | its ROC-AUC | gap | rank |",
        "|---|---|---|---|---|---|",
    ]
    within = 0
    for ds in datasets:
        for d, r in zip(detectors, _ranks([auc[ds, d] for d in detectors]), strict=True):
            ranks[d].append(r)
        anchors = [d for d in detectors if d != detector]
        best = max(anchors, key=lambda d: auc[ds, d])
        gap = auc[ds, detector] - auc[ds, best]
        within += gap >= -0.01
        lines.append(
            f"| {ds} | {auc[ds, detector]:.3f} | {best} | {auc[ds, best]:.3f} | {gap:+.3f} "
            f"| {ranks[detector][-1]:g} |"
        )
    mean_rank = {d: float(np.mean(v)) for d, v in ranks.items()}
    lines += [
        "",
        f"{detector} within 0.01 ROC-AUC of the best anchor on {within} of {len(datasets)} sets.",
        "",
        "| | " + " | ".join(detectors) + " |",
        "|---|" + "---|" * len(detectors),
        "| mean ROC-AUC | "
        + " | ".join(f"{mean_metric('roc_auc', d):.3f}" for d in detectors)
        + " |",
        "| mean AP | "
        + " | ".join(f"{mean_metric('average_precision', d):.3f}" for d in detectors)
        + " |",
        "| mean rank | " + " | ".join(f"{mean_rank[d]:.2f}" for d in detectors) + " |",
    ]
    summary = {
        "datasets": len(datasets),
        "within_0.01_of_best_anchor": int(within),
        "mean_rank": mean_rank,
        "mean_roc_auc": {d: mean_metric("roc_auc", d) for d in detectors},
        "mean_average_precision": {d: mean_metric("average_precision", d) for d in detectors},
    }
    return lines, summary


def summarise(results: list[dict]) -> str:
    """Markdown: the detector's score vs every anchor, its components, seed spread, timing."""
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    scores = [r for r in results if r["output"] == "score"]
    detectors = list(dict.fromkeys(r["detector"] for r in scores))

    def pick(ds: str, det: str, out: str = "score") -> list[dict]:
        return [r for r in results if (r["dataset"], r["detector"], r["output"]) == (ds, det, out)]

    lines = [
        "ROC-AUC / average precision, mean over seeds:",
        "",
        "| dataset | " + " | ".join(detectors) + " |",
        "|---|" + "---|" * len(detectors),
    ]
    means: dict[str, list[tuple[float, float]]] = {d: [] for d in detectors}
    for ds in datasets:
        cells = []
        for det in detectors:
            rows = pick(ds, det)
            auc, ap = _cell(rows, "roc_auc"), _cell(rows, "average_precision")
            means[det].append((auc, ap))
            cells.append(f"{auc:.3f} / {ap:.3f}")
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean** | "
        + " | ".join(
            f"**{np.mean([m[0] for m in means[d]]):.3f} / {np.mean([m[1] for m in means[d]]):.3f}**"
            for d in detectors
        )
        + " |"
    )
    if "ganomaly" in detectors and len(detectors) > 1:
        lines += ["", *standing(results)[0]]
    components = [
        o
        for o in dict.fromkeys(r["output"] for r in results if r["detector"] == "ganomaly")
        if o != "score"
    ]
    if components:
        lines += [
            "",
            "The detector's components (ROC-AUC / AP, mean over seeds):",
            "",
            "| dataset | score | " + " | ".join(components) + " |",
            "|---|---|" + "---|" * len(components),
        ]
        for ds in datasets:
            cells = []
            for out in ["score", *components]:
                rows = pick(ds, "ganomaly", out)
                cells.append(
                    f"{_cell(rows, 'roc_auc'):.3f} / {_cell(rows, 'average_precision'):.3f}"
                )
            lines.append(f"| {ds} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Seed spread and cost of the detector:",
            "",
            "| dataset | ROC-AUC per seed | std | rows given to `train` | fit s "
            "| fit s per 1k rows | `train` wall s | stability events "
            "| left out by the self-check |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for ds in datasets:
            rows = sorted(pick(ds, "ganomaly"), key=lambda r: r["seed"])
            aucs = [r["roc_auc"] for r in rows]
            fit = np.mean([r["fit_s"] for r in rows])
            given = rows[0]["rows_given"]
            events = sorted({e for r in rows for e in r["events"]}) or ["none"]
            left_out = [
                f"{n} (seeds {', '.join(str(r['seed']) for r in rows if n in r['left_out'])})"
                for n in sorted({n for r in rows for n in r.get("left_out", [])})
            ] or ["none"]
            lines.append(
                f"| {ds} | {' / '.join(f'{a:.3f}' for a in aucs)} | {np.std(aucs):.4f} | {given} "
                f"| {fit:.1f} | {1000 * fit / given:.2f} | "
                f"{np.mean([r['train_wall_s'] for r in rows]):.1f} | {', '.join(events)} "
                f"| {'; '.join(left_out)} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
