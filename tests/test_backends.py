"""One code path for every backend: train, save, load and score under JAX in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

SCRIPT = r"""
import json, sys
import keras, numpy as np
from anomaly.bundle.bundle import Bundle
from anomaly.bundle.schema import Schema
from anomaly.bundle.training import train_bundle
from testsupport.data import FEATURES, make_tabular_data

assert keras.backend.backend() == "jax", keras.backend.backend()
out, tf_bundle = sys.argv[1], sys.argv[2]
normal, anomalies = make_tabular_data()
train_bundle(normal, out, Schema.tabular(FEATURES),
             detector_params={"epochs": 2, "hidden": (16, 8)}, name="jax")
for detector in ("anogan",):
    train_bundle(normal, out + "-" + detector, Schema.tabular(FEATURES), detector=detector,
                 detector_params={"epochs": 1, "hidden": (16, 8), "search_steps": 5})
loaded = Bundle.load(out)
tf_loaded = Bundle.load(tf_bundle)
x = np.concatenate([normal[:20], anomalies[:5]])
print(json.dumps({
    "backend": loaded.manifest["runtime"]["keras_backend"],
    "scores": loaded.score_components(x).score.tolist(),
    "anogan": Bundle.load(out + "-anogan").score_components(x).score.tolist(),
    "tf_scores": tf_loaded.score_components(x).score.tolist(),
}))
"""


def test_train_save_load_score_under_jax(tmp_path, tiny_bundle):
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "jax-bundle"), str(tiny_bundle)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert len(result["scores"]) == len(result["anogan"]) == 25
    # anomalies (last 5) outscore normal rows for the bundle trained under JAX
    assert min(result["scores"][20:]) > sorted(result["scores"][:20])[10]

    # the TensorFlow-trained bundle scores the same under JAX as under TensorFlow
    from anomaly.bundle.bundle import Bundle
    from testsupport.data import make_tabular_data

    normal, anomalies = make_tabular_data()
    import numpy as np

    x = np.concatenate([normal[:20], anomalies[:5]])
    tf_scores = Bundle.load(tiny_bundle).score_components(x).score
    np.testing.assert_allclose(result["tf_scores"], tf_scores, rtol=1e-3, atol=1e-3)


def test_cli_train_backend_option_selects_jax(tmp_path):
    import numpy as np

    from testsupport.data import FEATURES, make_tabular_data

    normal, _ = make_tabular_data(300, 0)
    data = tmp_path / "normal.csv"
    np.savetxt(data, normal, delimiter=",", header=",".join(FEATURES), comments="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly.cli",
            "train",
            str(data),
            "--out",
            str(tmp_path / "b"),
            "--epochs",
            "1",
            "--hidden",
            "8",
            "--quiet",
            "--backend",
            "jax",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["runtime"]["keras_backend"] == "jax"
