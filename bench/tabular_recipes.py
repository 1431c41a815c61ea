"""Which parts of GANomaly's record score earn their place, and what the bank size costs.

Same protocol and splits as bench/tabular.py (seeds 0-2, 60 % of the normal rows to fit,
the rest plus every anomaly to test). For each dataset and seed one bundle is trained
in-process exactly as `anomaly train` does at its defaults; then, **with the same trained
networks**, the score is rebuilt several ways and the test part scored once per way:

- recipes: which components vote (equal weights), e.g. the two memory banks alone (the
  default), + the one-class boundary (the default until e307e2b), + the reconstruction,
  + the input bank (kNN on the scaled records themselves);
- bank sizes: the banks + boundary recipe with the memory banks subsampled to 1,024 / 2,048 /
  4,096 rows (what `--bank-rows` trades against stream throughput).

Each variant refits the normaliser and reruns the self-check on the normal validation split,
as training does; nothing is chosen with test data. This attributes the score's quality to
its parts; bench/tabular.py (through the CLI) is the benchmark of record.

    python bench/tabular_recipes.py                     # writes bench/out/tabular_recipes.json
    python bench/tabular_recipes.py --summarise-only --out bench/results/tabular_recipes.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tabular import DATASETS, load, split  # noqa: E402

BANKS = {"encoder_knn": 1.0, "discriminator_knn": 1.0}
RECIPES = {
    "banks (default)": BANKS,
    "banks + boundary (default until e307e2b)": {**BANKS, "encoder_svm": 1.0},
    "banks + reconstruction": {**BANKS, "reconstruction": 1.0},
    "banks + boundary + reconstruction": {
        **BANKS,
        "encoder_svm": 1.0,
        "reconstruction": 1.0,
    },
    "all six components": {
        **BANKS,
        "encoder_svm": 1.0,
        "reconstruction": 1.0,
        "latent": 1.0,
        "discriminator": 1.0,
    },
    # opt-in input bank (kNN on the scaled records): built after the recipes above
    "banks + input bank": {**BANKS, "input_knn": 1.0},
    "input bank alone": {"input_knn": 1.0},
}
BANK_ROWS = (1024, 2048, 4096)


def rescore(detector, weights: dict[str, float], validation: np.ndarray, test: np.ndarray):
    """Test scores with ``weights``, the normaliser and self-check refitted on validation."""
    detector.score_weights = dict(weights)
    normal = detector.fit_normaliser(validation)
    detector.self_check(validation, normal)
    return detector.decision_function(test)


def run_one(dataset: str, seed: int, work: Path, bank_rows: bool = True) -> list[dict]:
    from anomaly.bundle.bundle import Bundle
    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import split_normal, train_bundle

    X, y = load(dataset)
    train, test = split(y, seed)
    names = [f"f{i}" for i in range(X.shape[1])]
    bundle_dir = work / f"{dataset}-{seed}"
    train_bundle(X[train], bundle_dir, Schema.tabular(names), seed=seed)
    bundle = Bundle.load(bundle_dir)
    detector, to_model = bundle.detector, bundle.preprocessor.transform
    fit_idx, val_idx, _ = split_normal(len(train), 0.15, 0.15, seed)
    fit_rows, validation = to_model(X[train][fit_idx]), to_model(X[train][val_idx])
    test_rows, labels = to_model(X[test]), y[test]
    rows = []

    def record(kind: str, variant: str, scores: np.ndarray) -> None:
        rows.append(
            {
                "dataset": dataset,
                "seed": seed,
                "kind": kind,
                "variant": variant,
                "roc_auc": float(roc_auc_score(labels, scores)),
                "average_precision": float(average_precision_score(labels, scores)),
                "left_out": [n for n, w in detector.normaliser_.weights.items() if not w],
            }
        )

    for variant, weights in RECIPES.items():
        if "input_knn" in weights and "input_knn" not in detector.memory_:
            # the input bank is opt-in: built once its weight is set (the others unchanged)
            detector.score_weights = dict(weights)
            detector._fit_memory(fit_rows)
        record("recipe", variant, rescore(detector, weights, validation, test_rows))
    # the bank sizes were measured with the recipe that was the default at the time
    boundary = RECIPES["banks + boundary (default until e307e2b)"]
    for rows_kept in BANK_ROWS if bank_rows else ():
        detector.bank_rows = rows_kept
        detector._fit_memory(fit_rows)
        record("bank_rows", str(rows_kept), rescore(detector, boundary, validation, test_rows))
    shutil.rmtree(bundle_dir)
    return rows


def summarise(results: list[dict]) -> str:
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    lines = []
    for kind, title in (("recipe", "components that vote"), ("bank_rows", "bank rows")):
        variants = list(dict.fromkeys(r["variant"] for r in results if r["kind"] == kind))
        lines += [
            f"ROC-AUC / AP, mean over seeds, by {title} (same trained networks):",
            "",
            f"| {title} | " + " | ".join(datasets) + " | **mean** |",
            "|---|" + "---|" * (len(datasets) + 1),
        ]
        for variant in variants:
            cells, means = [], []
            for ds in datasets:
                rows = [
                    r
                    for r in results
                    if (r["kind"], r["variant"], r["dataset"]) == (kind, variant, ds)
                ]
                auc = float(np.mean([r["roc_auc"] for r in rows]))
                ap = float(np.mean([r["average_precision"] for r in rows]))
                means.append((auc, ap))
                cells.append(f"{auc:.3f} / {ap:.3f}")
            mean_auc, mean_ap = np.mean([m[0] for m in means]), np.mean([m[1] for m in means])
            lines.append(
                f"| {variant} | " + " | ".join(cells) + f" | **{mean_auc:.4f} / {mean_ap:.4f}** |"
            )
        lines.append("")
    return "\n".join(lines)


def ranks_against(results: list[dict], anchor_results: list[dict]) -> str:
    """Markdown: each recipe's mean ROC-AUC rank among itself and the anchors of a
    bench/tabular.py run on the same splits, and on how many sets it is within 0.01 of the
    best anchor."""
    from tabular import _ranks

    recipes = [r for r in results if r["kind"] == "recipe"]
    datasets = list(dict.fromkeys(r["dataset"] for r in recipes))
    anchors = list(
        dict.fromkeys(
            r["detector"]
            for r in anchor_results
            if r["detector"] != "ganomaly" and r["output"] == "score"
        )
    )

    def mean(rows: list[dict]) -> float:
        return float(np.mean([r["roc_auc"] for r in rows]))

    best = {}
    for ds in datasets:
        best[ds] = [
            mean([r for r in anchor_results if (r["dataset"], r["detector"]) == (ds, a)])
            for a in anchors
        ]
    lines = [
        f"| recipe | mean rank among it and {len(anchors)} anchors | within 0.01 of the best |",
        "|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in recipes):
        ranks, within = [], 0
        for ds in datasets:
            own = mean([r for r in recipes if (r["variant"], r["dataset"]) == (variant, ds)])
            ranks.append(_ranks([own, *best[ds]])[0])
            within += own - max(best[ds]) >= -0.01
        lines.append(f"| {variant} | {np.mean(ranks):.2f} | {within} of {len(datasets)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "tabular_recipes.json")
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--recipes-only", action="store_true", help="Skip the bank sizes.")
    parser.add_argument(
        "--anchors", type=Path, default=None, help="A bench/tabular.py JSON: rank the recipes."
    )
    args = parser.parse_args()
    if not args.summarise_only:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        results = json.loads(args.out.read_text())["results"] if args.out.is_file() else []
        done = {(r["dataset"], r["seed"]) for r in results}
        work = Path(tempfile.mkdtemp(prefix="anomaly-recipes-"))
        for dataset in args.datasets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (dataset, seed) in done:
                    continue
                results += run_one(dataset, seed, work, bank_rows=not args.recipes_only)
                print(f"{dataset} seed {seed} done", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"results": results}, indent=1))
    results = json.loads(args.out.read_text())["results"]
    print(summarise(results))
    if args.anchors:
        print(ranks_against(results, json.loads(args.anchors.read_text())["results"]))


if __name__ == "__main__":
    main()
