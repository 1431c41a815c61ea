"""Data-parallel training (`anomaly train --devices N`) on two virtual CPU devices.

XLA splits the host CPU into devices only when ``XLA_FLAGS`` is set before JAX starts, so
every training runs in its own process, through the real CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).parents[1]
TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def _train(tmp_path: Path, data: Path, out: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": TWO_DEVICES,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "anomaly.cli", "--backend", "jax", "--log-level", "ERROR"]
    command += ["train", str(data), "--out", str(tmp_path / out), "--quiet", "--hidden", "16,8"]
    return subprocess.run(
        command + list(args), capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def normal_csv(tmp_path_factory):
    from testsupport.data import FEATURES, make_tabular_data

    # 600 rows: train / validation / calibration splits of 420 / 90 / 90, all even, so the
    # two-device run drops no row and must match the one-device run up to float noise
    normal, _ = make_tabular_data(600, 0)
    path = tmp_path_factory.mktemp("dp") / "normal.csv"
    np.savetxt(path, normal, delimiter=",", header=",".join(FEATURES), comments="")
    return path


def test_two_devices_write_a_bundle_that_scores_like_one_device(tmp_path, normal_csv):
    from anomaly.bundle.bundle import Bundle
    from testsupport.data import make_tabular_data

    for out, devices in (("two", "2"), ("one", "1")):
        proc = _train(tmp_path, normal_csv, out, "--epochs", "2", "--devices", devices)
        assert proc.returncode == 0, proc.stderr[-3000:]

    two, one = Bundle.load(tmp_path / "two"), Bundle.load(tmp_path / "one")
    training = two.manifest["training"]
    assert training["devices"] == 2 and one.manifest["training"]["devices"] == 1
    (parallel,) = [e for e in training["log"] if e.get("phase") == "data_parallel"]
    # the weights really were replicated over both devices, not trained on one
    assert parallel["devices"] == ["cpu:0", "cpu:1"] and parallel["weights_on"] == 2
    # same bundle format: same files, same parameters, the device count is no model param
    assert sorted(two.manifest["files"]) == sorted(one.manifest["files"])
    assert two.manifest["model"]["params"] == one.manifest["model"]["params"]

    normal, anomalies = make_tabular_data(40, 20, seed=3)
    x = np.concatenate([normal, anomalies])
    s_two, s_one = two.score_components(x).score, one.score_components(x).score
    # the global-batch loss is the same sum in another order: float noise only, which the
    # one-class boundary's solver (libsvm, stopping tolerance 1e-3) passes on at up to ~1e-3
    np.testing.assert_allclose(s_two, s_one, rtol=1e-3, atol=1e-3)
    assert s_two[40:].min() > np.median(s_two[:40])
    assert two.threshold == pytest.approx(one.threshold, rel=1e-3, abs=1e-3)


def test_anogan_trains_on_two_devices(tmp_path, normal_csv):
    from anomaly.bundle.bundle import Bundle

    proc = _train(
        tmp_path,
        normal_csv,
        "anogan",
        *("--detector", "anogan", "--anogan-mode", "encoder", "--epochs", "1"),
        *("--devices", "all"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = Bundle.load(tmp_path / "anogan")
    assert bundle.manifest["training"]["devices"] == 2
    scores = bundle.score_components(np.loadtxt(normal_csv, delimiter=",", skiprows=1)[:32]).score
    assert scores.shape == (32,) and np.all(np.isfinite(scores))


REFUSALS = r"""
import json, sys
from click.testing import CliRunner
from anomaly.cli import main

data, out = sys.argv[1], sys.argv[2]
results = []
for extra in (["--devices", "3"], ["--devices", "2", "--batch-size", "63"]):
    result = CliRunner().invoke(
        main, ["--backend", "jax", "train", data, "--out", out, "--quiet", *extra]
    )
    results.append({"code": result.exit_code, "output": result.output})
print(json.dumps(results))
"""


def test_device_requests_that_cannot_work_fail_in_one_line(tmp_path, normal_csv):
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": TWO_DEVICES}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", REFUSALS, str(normal_csv), str(tmp_path / "refused")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    too_many, uneven = json.loads(proc.stdout.strip().splitlines()[-1])
    for result in (too_many, uneven):
        assert result["code"] == 2
        assert result["output"].strip().splitlines()[-1].startswith("error: --devices")
    assert "asked for 3 devices, 2 found (cpu:0, cpu:1)" in too_many["output"]
    assert "batch size 63 does not split evenly over 2 devices" in uneven["output"]
    assert not (tmp_path / "refused").exists()


def test_more_than_one_device_on_tensorflow_says_to_use_jax(tmp_path, normal_csv):
    import keras
    from click.testing import CliRunner

    from anomaly.cli import main

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this test process runs Keras on another backend than TensorFlow")
    result = CliRunner().invoke(
        main, ["train", str(normal_csv), "--out", str(tmp_path / "tf"), "--devices", "2"]
    )
    assert result.exit_code == 2
    assert "needs the JAX backend" in result.output and "--backend jax" in result.output
    assert not (tmp_path / "tf").exists()


def test_devices_option_refuses_what_is_not_a_count(tmp_path, normal_csv):
    from click.testing import CliRunner

    from anomaly.cli import main

    result = CliRunner().invoke(
        main, ["train", str(normal_csv), "--out", str(tmp_path / "x"), "--devices", "0"]
    )
    assert result.exit_code == 2 and "positive number or 'all'" in result.output
