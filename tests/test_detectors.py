"""Detectors on small real arrays: components, API conventions, training safeguards."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors import AnoGAN, GANomaly
from detectors.base import SCORING_BUCKETS, ScoreComponents
from detectors.ganomaly import GANomalyNet
from tests.conftest import make_tabular_data

TINY = {"epochs": 4, "batch_size": 64, "hidden": (16, 8), "seed": 0}


@pytest.fixture(scope="module")
def data():
    normal, anomalies = make_tabular_data(800, 80)
    mean, std = normal[:600].mean(0), normal[:600].std(0)
    scale = lambda a: ((a - mean) / std).astype("float32")  # noqa: E731
    return scale(normal[:600]), scale(normal[600:]), scale(anomalies)


@pytest.fixture(scope="module")
def ganomaly(data):
    train, _, _ = data
    return GANomaly(**TINY).fit(train)


def test_ganomaly_components_and_sklearn_api(ganomaly, data):
    _, test_normal, anomalies = data
    X = np.concatenate([test_normal, anomalies])
    comps = ganomaly.score_components(X)
    assert isinstance(comps, ScoreComponents)
    assert comps.component_names() == ["reconstruction", "discriminator", "latent"]
    assert comps.score.shape == comps.reconstruction.shape == comps.latent.shape == (len(X),)
    assert comps.contributions.shape == X.shape == comps.reconstructed.shape
    np.testing.assert_allclose(
        comps.reconstruction, np.abs(X - comps.reconstructed).mean(axis=1), rtol=1e-5
    )
    np.testing.assert_array_equal(ganomaly.score_samples(X), comps.score)
    y = np.r_[np.zeros(len(test_normal)), np.ones(len(anomalies))]
    assert roc_auc_score(y, comps.score) > 0.9
    ganomaly.threshold_ = float(np.quantile(ganomaly.score_samples(test_normal), 0.95))
    assert set(np.unique(ganomaly.predict(X))) <= {0, 1}
    assert ganomaly.predict(anomalies).mean() > ganomaly.predict(test_normal).mean()


def test_scores_do_not_depend_on_batch_padding(ganomaly, data):
    _, test_normal, _ = data
    whole = ganomaly.score_samples(test_normal[:100])
    one_by_one = np.concatenate([ganomaly.score_samples(test_normal[i : i + 1]) for i in range(7)])
    np.testing.assert_allclose(whole[:7], one_by_one, rtol=1e-4, atol=1e-5)
    assert 100 <= SCORING_BUCKETS[3]


def test_rejects_bad_input(ganomaly):
    with pytest.raises(ValueError, match="does not match"):
        ganomaly.score_samples(np.zeros((3, 4), "float32"))
    with pytest.raises(ValueError, match="NaN"):
        ganomaly.score_samples(np.full((2, 5), np.nan, "float32"))


def test_training_log_records_every_epoch(ganomaly):
    epochs = [e for e in ganomaly.training_log_ if "phase" not in e]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    for key in ("g_loss", "d_loss", "con", "val_con", "output_variance_ratio"):
        assert all(np.isfinite(e[key]) for e in epochs), key


def test_seed_makes_training_reproducible(data):
    train, test_normal, _ = data
    a = GANomaly(**{**TINY, "epochs": 1}).fit(train).score_samples(test_normal[:20])
    b = GANomaly(**{**TINY, "epochs": 1}).fit(train).score_samples(test_normal[:20])
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_discriminator_collapse_reinitialises_it(data):
    train, _, _ = data
    # A threshold above any BCE loss makes every epoch count as collapsed.
    det = GANomaly(**{**TINY, "epochs": 2, "d_collapse_threshold": 100.0}).fit(train)
    events = [e for entry in det.training_log_ for e in entry["events"]]
    assert events.count("discriminator_collapse_reinitialised") >= 1


def test_reinitialise_discriminator_changes_weights(ganomaly):
    net = GANomalyNet(
        {k: v for k, v in ganomaly.subnets_.items()},
        ganomaly._build_discriminator,
        1.0,
        50.0,
        1.0,
    )
    before = [w.copy() for w in net.discriminator.get_weights()]
    net.reinitialise_discriminator()
    after = net.discriminator.get_weights()
    assert any(not np.allclose(b, a) for b, a in zip(before, after, strict=True))


def test_save_load_round_trip(ganomaly, data, tmp_path):
    _, test_normal, _ = data
    ganomaly.save(tmp_path)
    state = __import__("json").loads((tmp_path / "detector.json").read_text())
    loaded = GANomaly.load(tmp_path, state)
    np.testing.assert_allclose(
        loaded.score_samples(test_normal), ganomaly.score_samples(test_normal), rtol=1e-5
    )
    assert loaded.sample(4, seed=1).shape == (4, 5)


@pytest.mark.parametrize("shape", [(20, 20, 1), (12, 24, 3)])
def test_conv_ganomaly_any_image_shape(shape):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.2, size=(96,) + shape).astype("float32")
    det = GANomaly(epochs=1, batch_size=32, filters=8, latent_dim=16, seed=0).fit(images)
    comps = det.score_components(images[:5])
    assert comps.contributions.shape == (5,) + shape
    assert comps.reconstructed.shape == (5,) + shape
    assert det.sample(3, seed=0).shape == (3,) + shape


def test_anogan_latent_search_improves_on_encoder(data):
    train, test_normal, anomalies = data
    fast = AnoGAN(**TINY, mode="encoder").fit(train)
    searched = AnoGAN(**TINY, mode="search", search_steps=40, search_batch=64)
    searched.fit(train)
    X = np.concatenate([test_normal[:50], anomalies[:30]])
    enc = fast.score_components(X)
    srch = searched.score_components(X)
    # The search starts at E(x) and descends the same objective, so it can only do better.
    objective = lambda c: 0.9 * c.reconstruction + 0.1 * c.discriminator  # noqa: E731
    assert objective(srch).mean() < objective(enc).mean()
    np.testing.assert_allclose(srch.score, objective(srch), rtol=1e-5)
    assert srch.latent is None and srch.component_names() == ["reconstruction", "discriminator"]
    y = np.r_[np.zeros(50), np.ones(30)]
    assert roc_auc_score(y, srch.score) > 0.8


def test_anogan_search_is_one_batch_not_per_record(data, monkeypatch):
    train, test_normal, _ = data
    det = AnoGAN(**{**TINY, "epochs": 1}, mode="search", search_steps=3, search_batch=64)
    det.fit(train)
    calls = []
    original = det._latent_search
    monkeypatch.setattr(det, "_latent_search", lambda x, z: calls.append(len(x)) or original(x, z))
    det.score_samples(test_normal[:100])
    assert calls == [64, 36]
