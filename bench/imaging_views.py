"""Which views of GANomaly's networks the image memory banks should read (exploratory).

For one task of bench/imaging.py's protocol, fit GANomaly in-process at its defaults
(``--epochs 0``: the networks stay random), then score the test images with a 5-NN cosine
bank over each candidate view of the networks:

- layout views: a block's feature map average-pooled to a g x g grid (g = 8, 4, 2) and
  flattened: ``e0`` / ``e1`` the encoder's first / second block on the per-image
  standardised input, ``d0c`` the discriminator's first conv with each kernel's mean removed,
  ``d1`` its second block on the standardised input, ``d1raw`` / ``dlraw`` its second block
  and its anomaly-map head on the raw input;
- orderless views (``_orderless``): per channel, the mean and standard deviation over all
  locations (``_orderless_raw`` without the unit norm);
- patch views (``_patch8``): PatchCore-style, each cell of the 8 x 8 grid (3 x 3
  neighbourhood mean) against a bank of training cells, the image's max / top-10 % mean;
- ``multi_orderless``: the unit-normed orderless views of e0, d0c, e1 and d1 concatenated
  (what the ``texture_knn`` bank of the trial read; not kept, see docs/benchmarks.md).

Combinations (``--summarise-only``): equal-weight sums of components scaled by their
median / IQR over the *test* scores — a shortcut for exploration only (the product scales
on the normal validation split). These runs looked at test labels; they led to the
texture-bank trial and are reported as such, not as the benchmark of record
(bench/imaging.py, through the CLI, is).

    python bench/imaging_views.py cifar10 cat --epochs 0
    python bench/imaging_views.py brain_mri tumour               # trained, the default
    python bench/imaging_views.py --summarise-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from imaging import DATA, as_float, tasks  # noqa: E402

OUT = ROOT / "bench" / "results" / "imaging_views"
COMBOS = {
    "layout banks (e0_g8 + d0c_g8)": ("e0_g8", "d0c_g8"),
    "+ multi_orderless (the trial)": ("e0_g8", "d0c_g8", "multi_orderless"),
    "+ e1_orderless": ("e0_g8", "d0c_g8", "e1_orderless"),
    "+ d1_orderless": ("e0_g8", "d0c_g8", "d1_orderless"),
    "+ tex_e1_dlraw": ("e0_g8", "d0c_g8", "tex_e1_dlraw"),
}


def _pooled(f: np.ndarray, grid: int) -> np.ndarray:
    n, g, _, c = f.shape
    p = max(1, g // grid)
    f = f[:, : (g // p) * p, : (g // p) * p]
    return f.reshape(n, g // p, p, g // p, p, c).mean(axis=(2, 4))


def _orderless(f: np.ndarray) -> np.ndarray:
    return np.concatenate([f.mean(axis=(1, 2)), f.std(axis=(1, 2))], axis=1)


def _knn(train: np.ndarray, test: np.ndarray, unit: bool = True) -> np.ndarray:
    from detectors.memory import MemoryBank

    return MemoryBank(5, unit, 4096).fit(train, 0).distance(test)


def _patch(train: np.ndarray, test: np.ndarray, rng: np.random.Generator) -> dict:
    from detectors.memory import MemoryBank, unit_rows

    def neighbourhood(a: np.ndarray) -> np.ndarray:
        g = a.shape[1]
        pad = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        return sum(pad[:, i : i + g, j : j + g] for i in range(3) for j in range(3)) / 9

    tr, te = neighbourhood(_pooled(train, 8)), neighbourhood(_pooled(test, 8))
    c = tr.shape[-1]
    cells = unit_rows(tr.reshape(-1, c))
    if len(cells) > 40000:
        cells = cells[rng.choice(len(cells), 40000, replace=False)]
    d = MemoryBank(1, False, 40000).fit(cells, 0).distance(unit_rows(te.reshape(-1, c)))
    d = d.reshape(len(te), -1)
    k = max(1, d.shape[1] // 10)
    return {"max": d.max(axis=1), "top": np.sort(d, axis=1)[:, -k:].mean(axis=1)}


def _taps(det):
    """A fitted GANomaly -> (one keras.Model with every candidate tap, their names)."""
    import keras

    from detectors import networks

    s = det.subnets_
    enc, disc = s["encoder"], s["discriminator"]
    inp = keras.Input(det._model_shape())
    std = networks.InstanceStandardise()(inp)
    tap = lambda net, layer: keras.Model(net.inputs, net.get_layer(layer).output)  # noqa: E731
    d1 = tap(disc, "discriminator_act1")
    outs = {
        "e0": tap(enc, "encoder_act0")(std),
        "d0c": networks.CentredConvTap(disc.get_layer("discriminator_conv0"))(inp),
        "e1": tap(enc, "encoder_act1")(std),
        "d1": d1(std),
        "d1raw": d1(inp),
        "dlraw": tap(disc, "discriminator_local_act")(inp),
    }
    return keras.Model(inp, list(outs.values())), list(outs)


def run(domain: str, task_name: str, epochs: int | None) -> dict:
    from sklearn.metrics import roc_auc_score

    from detectors.ganomaly import GANomaly
    from detectors.memory import unit_rows

    (task,) = list(tasks(domain, DATA, 0, {task_name}))
    train, test, y = as_float(task.train), as_float(task.test), task.labels
    started = time.time()
    det = GANomaly(seed=0, verbose=0).fit(train, epochs=epochs)
    row: dict = {"domain": domain, "task": task_name, "epochs": epochs}
    row["fit_s"] = round(time.time() - started, 1)
    comps = det.score_components(test)
    row["score"] = roc_auc_score(y, comps.score)
    model, names = _taps(det)

    def features(x: np.ndarray) -> dict[str, np.ndarray]:
        xm = det._to_model(x)
        parts = [model.predict_on_batch(xm[s : s + 256]) for s in range(0, len(xm), 256)]
        return {n: np.concatenate([np.asarray(p[i]) for p in parts]) for i, n in enumerate(names)}

    ftr, fte = features(train), features(test)
    scores: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for n in names:
        a, b = ftr[n], fte[n]
        for grid in (8, 4, 2):
            if a.shape[1] >= grid:
                scores[f"{n}_g{grid}"] = _knn(_pooled(a, grid), _pooled(b, grid))
        scores[f"{n}_orderless"] = _knn(_orderless(a), _orderless(b))
        scores[f"{n}_orderless_raw"] = _knn(_orderless(a), _orderless(b), unit=False)
        if n in ("e0", "d0c"):
            for k, v in _patch(a, b, rng).items():
                scores[f"{n}_patch8_{k}"] = v

    def texture(views: tuple[str, ...], f: dict) -> np.ndarray:
        return np.concatenate([unit_rows(_orderless(f[v])) for v in views], 1)

    for label, views in {
        "multi_orderless": ("e0", "d0c", "e1", "d1"),
        "tex_e1_d1": ("e1", "d1"),
        "tex_e1_dlraw": ("e1", "dlraw"),
    }.items():
        scores[label] = _knn(texture(views, ftr), texture(views, fte))
    row.update({k: float(roc_auc_score(y, v)) for k, v in scores.items()})
    OUT.mkdir(parents=True, exist_ok=True)
    kept = {c: scores[c].astype(np.float32) for parts in COMBOS.values() for c in parts}
    np.savez_compressed(
        OUT / f"scores_{domain}_{task_name}_{epochs}.npz", y=y.astype(np.int8), **kept
    )
    return row


def summarise() -> str:
    from sklearn.metrics import roc_auc_score

    def scaled(v: np.ndarray) -> np.ndarray:
        q1, q2, q3 = np.percentile(v, [25, 50, 75])
        return (v - q2) / (q3 - q1 + 1e-12)

    rows = [json.loads(x) for x in (OUT / "results.jsonl").read_text().splitlines()]
    singles = ("e0_g8", "d0c_g8", "e1_orderless", "d1_orderless", "dlraw_orderless")
    singles += ("multi_orderless", "e0_patch8_max", "d0c_patch8_top")
    lines = [
        "Single views, kNN ROC-AUC:",
        "",
        "| task | networks | " + " | ".join(singles) + " |",
        "|---|---|" + "---|" * len(singles),
    ]
    for r in rows:
        nets = "random" if r["epochs"] == 0 else "trained"
        cells = " | ".join(f"{r[c]:.3f}" if c in r else "-" for c in singles)
        lines.append(f"| {r['domain']} {r['task']} | {nets} | {cells} |")
    lines += [
        "",
        "Equal-weight combinations (test-scaled, exploratory), ROC-AUC:",
        "",
        "| task | networks | " + " | ".join(COMBOS) + " |",
        "|---|---|" + "---|" * len(COMBOS),
    ]
    for r in rows:
        data = np.load(OUT / f"scores_{r['domain']}_{r['task']}_{r['epochs']}.npz")
        cells = []
        for parts in COMBOS.values():
            if all(p in data for p in parts):
                combined = sum(scaled(data[p]) for p in parts)
                cells.append(f"{roc_auc_score(data['y'], combined):.3f}")
            else:
                cells.append("-")
        nets = "random" if r["epochs"] == 0 else "trained"
        lines.append(f"| {r['domain']} {r['task']} | {nets} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("domain", nargs="?")
    parser.add_argument("task", nargs="?")
    parser.add_argument("--epochs", type=int, default=None, help="0: random networks")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    if not args.summarise_only:
        row = run(args.domain, args.task, args.epochs)
        with open(OUT / "results.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    print(summarise())


if __name__ == "__main__":
    main()
