"""Drift against the bundle's reference: PSI maths, the rolling monitor, serve's gauges on
the real broker (normal traffic stays under the bound, shifted traffic crosses it) and the
offline `anomaly drift` command."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from anomaly.bundle.bundle import MANIFEST, Bundle
from anomaly.bundle.profile import MAJOR_SHIFT, Profile, bin_counts, bin_edges, psi
from anomaly.cli import main
from anomaly.stream.drift import DriftMonitor
from anomaly.stream.metrics import Metrics
from testsupport.data import FEATURES, make_tabular_data, unique_name


def held_out(n_normal=600, n_anomalies=0):
    """Normal rows from the tiny bundle's distribution that it was not trained on."""
    normal, anomalies = make_tabular_data(600 + n_normal, max(1, n_anomalies), seed=0)
    rows = np.concatenate([normal[600:], anomalies[:n_anomalies]])
    rows[:, 4] = np.abs(rows[:, 4]) * 100
    return rows


def shifted(rows):
    out = rows.copy()
    out[:, 0] += 3 * rows[:, 0].std()  # one feature moves by three standard deviations
    return out


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_psi_is_zero_for_the_reference_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=20_000)
    edges = bin_edges(reference)
    assert len(edges) == 9
    proportions = bin_counts(reference, edges) / reference.size
    assert np.allclose(proportions, 0.1, atol=1e-3)
    same = psi(proportions, bin_counts(rng.normal(size=20_000), edges))
    small = psi(proportions, bin_counts(rng.normal(0.2, 1, 20_000), edges))
    large = psi(proportions, bin_counts(rng.normal(1.0, 1, 20_000), edges))
    assert same < 0.01 < small < 0.1 < MAJOR_SHIFT < large
    assert psi(proportions, np.zeros(10, dtype=int)) == 0.0


def test_the_bundle_stores_its_reference_and_old_bundles_have_none(tiny_bundle):
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    reference = manifest["drift_reference"]
    assert list(reference["features"]) == FEATURES and reference["feature_rows"] == 600
    assert reference["score"]["rows"] == manifest["training"]["n_calibration"]
    assert sum(reference["score"]["proportions"]) == pytest.approx(1.0)
    assert (
        Profile.from_manifest({k: v for k, v in manifest.items() if k != "drift_reference"}) is None
    )


def test_the_monitor_keeps_a_rolling_window(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    metrics = Metrics()
    monitor = DriftMonitor(Profile.from_manifest(bundle.manifest), metrics, window=400)
    normal = held_out(400)
    for chunk in np.array_split(normal, 8):
        values = monitor.observe(chunk, bundle.score_components(chunk).score)
    assert monitor.records == 400 and max(values.values()) < MAJOR_SHIFT
    moved = shifted(normal)
    for chunk in np.array_split(moved, 8):
        values = monitor.observe(chunk, bundle.score_components(chunk).score)
    assert monitor.records == 400, "the normal batches left the window"
    assert values["f0"] > MAJOR_SHIFT and max(values[f] for f in FEATURES[1:]) < MAJOR_SHIFT
    text = metrics.exposition().decode()
    assert 'anomaly_feature_drift_psi{feature="f0"}' in text
    assert "anomaly_drift_window_records 400.0" in text


def test_drift_command_on_files(tiny_bundle, tmp_path):
    normal = tmp_path / "normal.csv"
    moved = tmp_path / "moved.csv"
    for path, rows in ((normal, held_out(600)), (moved, shifted(held_out(600)))):
        path.write_text(
            ",".join(FEATURES) + "\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows)
        )
    calm = run("drift", "--bundle", tiny_bundle, normal, "--fail-above", "0.25")
    assert calm.exit_code == 0, calm.output
    assert "drift of 600 records" in calm.output and "major shift" not in calm.output
    alarmed = run("drift", "--bundle", tiny_bundle, moved, "--fail-above", "0.25")
    assert alarmed.exit_code == 1
    table = alarmed.output.splitlines()
    assert table[2].startswith("score") and table[3].startswith("f0")
    assert table[3].endswith("major shift")


def test_a_bundle_without_a_reference_serves_without_drift(tiny_bundle, tmp_path, caplog):
    from anomaly.stream.drift import attach_drift

    path = tmp_path / "old"
    shutil.copytree(tiny_bundle, path)
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["drift_reference"]
    (path / MANIFEST).write_text(json.dumps(manifest))

    class Service:
        metrics = Metrics()
        observers: list = []

    caplog.set_level("INFO", logger="anomaly.stream.drift")
    assert attach_drift(Service, Bundle.load(path), 1000) is None
    assert Service.observers == [] and "drift monitoring off" in caplog.text
    result = run("drift", "--bundle", path, tmp_path / "any.csv")
    assert result.exit_code == 2 and "no drift reference" in result.output


@pytest.mark.kafka
def test_serve_drift_gauges_stay_under_the_bound_then_cross_it(kafka_bootstrap, tiny_bundle):
    from anomaly.demo.broker import create_topic
    from anomaly.stream.config import load_serve_config
    from anomaly.stream.drift import attach_drift
    from anomaly.stream.metrics import MetricsServer
    from anomaly.stream.service import StreamService
    from anomaly.topics import produce
    from testsupport.kafka import scrape, wait_until

    topics = {
        "input_topic": unique_name("in"),
        "alert_topic": unique_name("alerts"),
        "dlq_topic": unique_name("dlq"),
        "group": unique_name("group"),
    }
    create_topic(kafka_bootstrap, topics["input_topic"], partitions=1)
    config = load_serve_config(
        {
            **topics,
            "bundle": str(tiny_bundle),
            "bootstrap_servers": kafka_bootstrap,
            "session_timeout_ms": 4000,
            "heartbeat_interval_ms": 500,
            "max_batch": 100,
            "commit_interval_ms": 200,
            "drift_window_records": 500,
        },
        env={},
    )
    metrics = Metrics()
    server = MetricsServer(metrics, "127.0.0.1", 0).start()
    service = StreamService(config, Bundle.load(tiny_bundle), metrics)
    assert attach_drift(service, Bundle.load(tiny_bundle), config.drift_window_records)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()

    def records(rows, prefix):
        return [
            (
                None,
                json.dumps({**dict(zip(FEATURES, r, strict=True)), "id": f"{prefix}{i}"}).encode(),
            )
            for i, r in enumerate(rows.tolist())
        ]

    def worst_feature():
        samples = scrape(server.url)
        return max(v for k, v in samples.items() if k.startswith("anomaly_feature_drift_psi"))

    try:
        normal = held_out(500)
        produce(kafka_bootstrap, topics["input_topic"], records(normal, "n"))
        assert wait_until(lambda: service.records_consumed >= 500, 60)
        assert wait_until(
            lambda: scrape(server.url).get("anomaly_drift_window_records{}") == 500, 10
        )
        assert worst_feature() < MAJOR_SHIFT
        assert scrape(server.url)["anomaly_score_drift_psi{}"] < MAJOR_SHIFT
        produce(kafka_bootstrap, topics["input_topic"], records(shifted(normal), "s"))
        assert wait_until(lambda: service.records_consumed >= 1000, 60)
        assert wait_until(lambda: worst_feature() > MAJOR_SHIFT, 10)
        assert scrape(server.url)["anomaly_feature_drift_psi{feature=f0}"] > MAJOR_SHIFT
    finally:
        service.stop()
        thread.join(30)
        server.stop()
