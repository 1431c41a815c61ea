"""Model bundles: checksums, schema checks, safe loading, atomic threshold history."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from anomaly.bundle.bundle import MANIFEST, Bundle
from anomaly.errors import BundleError
from testsupport.data import make_tabular_data


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle, path)
    return path


def _manifest(path):
    return json.loads((path / MANIFEST).read_text())


def _write_manifest(path, manifest):
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_manifest_describes_the_model(tiny_bundle):
    m = _manifest(tiny_bundle)
    assert [f["name"] for f in m["schema"]["features"]] == ["f0", "f1", "f2", "f3", "amount"]
    assert m["preprocessing"]["log1p_columns"] == ["amount"]
    assert len(m["preprocessing"]["centre"]) == 5
    assert m["runtime"]["keras_backend"] in ("tensorflow", "jax", "torch")
    assert m["score"]["weights"]["encoder_knn"] == m["score"]["weights"]["discriminator_knn"] == 1
    assert m["score"]["components"] == [
        "reconstruction",
        "discriminator",
        "latent",
        "encoder_knn",
        "discriminator_knn",
        "encoder_svm",
    ]
    banks = {name for name in m["files"] if "memory_" in name}
    assert len(banks) == 4  # two banks and, for records, the rows that explain them
    assert any(name.endswith("encoder_svm.npz") for name in m["files"])
    assert "normal validation split" in m["score"]["formula"]
    assert all(len(v) == 64 for v in m["files"].values())
    (entry,) = m["thresholds"]
    assert entry["method"] == "quantile" and entry["params"]["target_fpr"] == 0.05
    assert entry["data_fingerprint"].startswith("sha256:") and entry["version"] == 1


def test_load_scores_in_original_units(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    normal, anomalies = make_tabular_data(seed=1)
    normal[:, 4] = abs(normal[:, 4]) * 100
    comps = bundle.score_components(np.concatenate([normal[:50], anomalies[:10]]))
    assert len(comps) == 60
    assert comps.score[50:].mean() > comps.score[:50].mean()
    assert bundle.threshold == _manifest(tiny_bundle)["thresholds"][-1]["value"]
    assert bundle.expected_anomaly_rate == 0.05
    # one source of truth: the detector's threshold_ is the bundle's live history entry,
    # not the validation-split threshold fit() set
    assert bundle.detector.threshold_ == bundle.threshold


def test_shape_mismatch_is_refused(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(BundleError, match="does not fit the bundle's schema"):
        bundle.score_components(np.zeros((2, 4)))


def test_swapped_model_file_is_refused(bundle_copy):
    keras_files = sorted((bundle_copy / "model").glob("*.keras"))
    shutil.copy(keras_files[0], keras_files[1])
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.load(bundle_copy)


def test_altered_checksum_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    key = next(iter(m["files"]))
    m["files"][key] = "0" * 64
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.load(bundle_copy)


def test_path_traversal_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    m["files"]["../../etc/passwd"] = "0" * 64
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(bundle_copy)


def test_schema_that_does_not_fit_the_network_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    m["schema"]["features"].append({"name": "extra", "dtype": "float64"})
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="does not match the network"):
        Bundle.load(bundle_copy)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle.load(tmp_path)


def test_threshold_append_is_seen_by_another_reader(bundle_copy):
    writer = Bundle.load(bundle_copy)
    reader = Bundle.load(bundle_copy)
    assert reader.refresh_threshold() is False
    entry = writer.append_threshold(
        {"value": 123.0, "method": "quantile", "params": {"target_fpr": 0.001}}
    )
    assert entry["version"] == 2 and writer.threshold == 123.0
    assert reader.refresh_threshold() is True
    assert (reader.threshold, reader.threshold_version) == (123.0, 2)
    assert reader.detector.threshold_ == 123.0
    assert reader.expected_anomaly_rate == 0.001
    assert reader.refresh_threshold() is False
    assert not list(bundle_copy.glob(".manifest.json.*"))


def test_create_refuses_to_overwrite(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    with pytest.raises(BundleError, match="not empty"):
        Bundle.create(tiny_bundle, bundle.detector, bundle.schema, {}, "x", {})


def test_sample_is_in_original_units(tiny_bundle):
    samples = Bundle.load(tiny_bundle).sample(200, seed=0)
    assert samples.shape == (200, 5)
    # amount was trained as |x| * 100 through a signed log1p: samples come back on that scale
    assert np.median(np.abs(samples[:, 4])) > 5


def test_the_threshold_lives_only_in_the_manifest_history(bundle_copy):
    state = json.loads((bundle_copy / "model" / "detector.json").read_text())
    assert state["threshold"] is None  # no second copy that could disagree
    bundle = Bundle.load(bundle_copy)
    assert (
        bundle.detector.threshold_
        == bundle.threshold
        == _manifest(bundle_copy)["thresholds"][-1]["value"]
    )


def test_an_old_bundle_with_a_threshold_in_its_detector_file_still_loads(bundle_copy):
    from anomaly.bundle.bundle import sha256_file

    state_path = bundle_copy / "model" / "detector.json"
    state = json.loads(state_path.read_text())
    state["threshold"] = 999.0
    state_path.write_text(json.dumps(state))
    m = _manifest(bundle_copy)
    m["files"]["model/detector.json"] = sha256_file(state_path)
    _write_manifest(bundle_copy, m)
    bundle = Bundle.load(bundle_copy)
    assert bundle.detector.threshold_ == bundle.threshold != 999.0


def test_rollback_appends_a_copy_and_keeps_the_history(bundle_copy):
    bundle = Bundle.load(bundle_copy)
    first = bundle.threshold
    bundle.append_threshold({"value": 50.0, "method": "quantile", "params": {"target_fpr": 1e-3}})
    entry = bundle.rollback_threshold(1)
    assert entry["version"] == 3 and entry["method"] == "rollback"
    assert entry["params"]["to_version"] == 1 and bundle.threshold == first
    assert [h["value"] for h in _manifest(bundle_copy)["thresholds"]] == [first, 50.0, first]
    with pytest.raises(BundleError, match="no threshold v7; the history has v1..v3"):
        bundle.rollback_threshold(7)


def test_an_edited_history_is_refused_by_append_and_ignored_by_refresh(bundle_copy):
    writer = Bundle.load(bundle_copy)
    reader = Bundle.load(bundle_copy)
    m = _manifest(bundle_copy)
    m["thresholds"][0]["value"] = 1e9
    m["thresholds"].append({**m["thresholds"][0], "version": 2})
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="no longer starts with the one loaded"):
        writer.append_threshold({"value": 1.0, "method": "quantile", "params": {}})
    assert reader.refresh_threshold() is False
    assert reader.threshold_version == 1 and reader.threshold < 1e9
