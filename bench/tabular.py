"""Detection quality on real tabular data under the shared semi-supervised protocol.

For seeds 0, 1, 2: split the normal rows 60/40; train (scaler, networks, threshold) on the
60 % normal part only; test on the other 40 % normal plus all anomalies. ROC-AUC and
average precision, mean over seeds. The test part is scored once, for the report.

Baselines (scikit-learn, same split and scaler): IsolationForest, PCA reconstruction error,
kNN distance, one-class SVM.

    python bench/tabular.py --out bench/out/tabular.json            # everything
    python bench/tabular.py --datasets fraud,cardio --detectors ganomaly,iforest
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("ANOMALY_DATASETS", ROOT.parent / "shared" / "datasets"))

DATASETS = {
    "fraud": "fraud/creditcard_sample.csv",
    "cardio": "tabular/6_cardio.npz",
    "thyroid": "tabular/38_thyroid.npz",
    "satimage-2": "tabular/31_satimage-2.npz",
    "shuttle": "tabular/32_shuttle.npz",
    "mnist-odds": "tabular/24_mnist.npz",
}


def load(name: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(X, y, indices of columns to log1p)."""
    path = DATA / DATASETS[name]
    if path.suffix == ".csv":
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
        cols = [f"V{i}" for i in range(1, 29)] + ["Amount"]
        X = np.array([[float(r[c]) for c in cols] for r in rows])
        y = np.array([int(float(r["Class"])) for r in rows])
        return X, y, [len(cols) - 1]
    with np.load(path) as data:
        return data["X"].astype(np.float64), data["y"].astype(int), []


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = int(round(0.6 * len(normal)))
    test = np.concatenate([normal[n_train:], np.flatnonzero(y == 1)])
    return normal[:n_train], test


def gan_scores(kind: str, X_train, X_test, log_cols, seed, epochs) -> dict[str, np.ndarray]:
    from anomaly.preprocessing import TabularPreprocessor
    from anomaly.training import make_detector, split_normal

    names = [f"x{i}" for i in range(X_train.shape[1])]
    pre = TabularPreprocessor(names, [names[i] for i in log_cols], "standard")
    tr, val, _ = split_normal(len(X_train), 0.15, 0.15, seed)
    pre.fit(X_train[tr])
    params = {"seed": seed, "epochs": epochs}
    if kind == "anogan-encoder":
        kind, params["mode"] = "anogan", "encoder"
    elif kind == "anogan-search":
        kind, params["mode"] = "anogan", "search"
    det = make_detector(kind, params)
    det.fit(pre.transform(X_train[tr]), validation=pre.transform(X_train[val]))
    comps = det.score_components(pre.transform(X_test))
    out = {"score": comps.score}
    out.update({f"component:{n}": comps.component(n) for n in comps.component_names()})
    return out


def baseline_scores(kind: str, X_train, X_test, log_cols, seed) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors
    from sklearn.svm import OneClassSVM

    from anomaly.preprocessing import TabularPreprocessor

    names = [f"x{i}" for i in range(X_train.shape[1])]
    pre = TabularPreprocessor(names, [names[i] for i in log_cols], "standard").fit(X_train)
    A, B = pre.transform(X_train), pre.transform(X_test)
    if kind == "iforest":
        model = IsolationForest(n_estimators=200, random_state=seed).fit(A)
        return {"score": -model.score_samples(B)}
    if kind == "pca":
        pca = PCA(n_components=0.9, random_state=seed).fit(A)
        return {"score": ((B - pca.inverse_transform(pca.transform(B))) ** 2).sum(axis=1)}
    if kind == "knn":
        nn = NearestNeighbors(n_neighbors=5).fit(A)
        return {"score": nn.kneighbors(B)[0].mean(axis=1)}
    if kind == "ocsvm":
        sub = A[np.random.default_rng(seed).permutation(len(A))[:5000]]
        return {"score": -OneClassSVM(gamma="scale", nu=0.05).fit(sub).score_samples(B)}
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument(
        "--detectors", default="ganomaly,anogan-encoder,anogan-search,iforest,pca,knn,ocsvm"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "tabular.json")
    args = parser.parse_args()
    import keras

    results = []
    for dataset in args.datasets.split(","):
        X, y, log_cols = load(dataset)
        for detector in args.detectors.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                train, test = split(y, seed)
                started = time.perf_counter()
                if detector in ("ganomaly", "anogan-encoder", "anogan-search"):
                    scores = gan_scores(detector, X[train], X[test], log_cols, seed, args.epochs)
                else:
                    scores = baseline_scores(detector, X[train], X[test], log_cols, seed)
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
                    }
                    results.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"backend": keras.backend.backend(), "results": results}, indent=1)
    )
    print_table(results)


def print_table(results: list[dict]) -> None:
    """Mean ROC-AUC / AP over seeds, one row per dataset, one column per detector."""
    keys = sorted(
        {(r["detector"], r["output"]) for r in results}, key=lambda k: (k[1] != "score", k)
    )
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    header = ["dataset"] + [d if o == "score" else f"{d} ({o.split(':')[1]})" for d, o in keys]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for ds in datasets:
        cells = [ds]
        for det, out in keys:
            rows = [
                r for r in results if (r["dataset"], r["detector"], r["output"]) == (ds, det, out)
            ]
            if rows:
                auc = np.mean([r["roc_auc"] for r in rows])
                ap = np.mean([r["average_precision"] for r in rows])
                cells.append(f"{auc:.3f} / {ap:.3f}")
            else:
                cells.append("")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
