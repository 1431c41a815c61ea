"""`anomaly promote` and the shadow comparison on real bundle directories (no broker): the
guard's judgement, trust, the link switch, history and rollback, one-line refusals."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import spearmanr

from anomaly.bundle.bundle import Bundle
from anomaly.bundle.promotion import Guard, judge
from anomaly.cli import main
from anomaly.stream.bundle_reload import BundleWatcher
from anomaly.stream.metrics import Metrics
from anomaly.stream.shadow import ShadowComparison
from anomaly.stream.threshold_reload import ThresholdWatcher
from testsupport.kafka import wait_until
from testsupport.keys import key_pair


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def variant(source: Path, path: Path, version: str, features: list[str] | None = None) -> Path:
    """A copy of ``source`` whose manifest names another model version (a second bundle
    without training one); ``features`` reorders the schema's columns."""
    shutil.copytree(source, path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["model"]["version"] = version
    if features:
        columns = {c["name"]: c for c in manifest["schema"]["features"]}
        manifest["schema"]["features"] = [columns[name] for name in features]
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def evidence_for(live: Path, challenger: Path, **changes) -> dict:
    """A shadow report as serve writes it, comparing these two bundles."""

    def identity(path: Path) -> dict:
        bundle = Bundle.load(path, model=False)
        return {
            "path": os.path.realpath(path),
            "name": bundle.model_name,
            "version": bundle.model_version,
            "threshold": bundle.threshold,
            "threshold_version": bundle.threshold_version,
        }

    report = {
        "format": 1,
        "written_at_s": time.time(),
        "input_topic": "transactions",
        "group": "scorer",
        "live": identity(live),
        "shadow": identity(challenger),
        "window": {"records": 2000, "size": 10000},
        "records_compared": 2000,
        "alert_rate": {"live": 0.02, "shadow": 0.025},
        "alerts": {"live": 40, "shadow": 50, "both": 35},
        "alert_jaccard": 35 / 55,
        "score_rank_correlation": 0.9,
        "drift": {"records": 2000, "score_psi": 0.05, "feature_psi_max": 0.08, "feature_max": "f0"},
        "scoring_seconds": {"live": 1.0, "shadow": 1.1},
    }
    report.update(changes)
    return report


@pytest.fixture
def pair(tiny_bundle, tmp_path) -> tuple[Path, Path]:
    live = tmp_path / "models" / "fraud"
    live.parent.mkdir()
    shutil.copytree(tiny_bundle, live)
    return live, variant(tiny_bundle, tmp_path / "models" / "fraud-v2", "c0ffee000002")


def test_comparison_window_rates_overlap_and_rank_correlation():
    rng = np.random.default_rng(0)
    comparison = ShadowComparison(window=300)
    batches = []
    for _ in range(5):
        live = rng.normal(size=100)
        shadow = live + rng.normal(scale=0.5, size=100)
        batches.append((live, shadow, live > 1.0, shadow > 1.2))
        comparison.add(*batches[-1])
    assert comparison.records == 300  # the two oldest batches fell out
    live, shadow, lf, sf = (np.concatenate([b[i] for b in batches[2:]]) for i in range(4))
    summary = comparison.summary()
    assert summary["alert_rate"] == {"live": lf.mean(), "shadow": sf.mean()}
    assert summary["alerts"]["both"] == (lf & sf).sum()
    assert summary["alert_jaccard"] == pytest.approx((lf & sf).sum() / (lf | sf).sum())
    assert summary["score_rank_correlation"] == pytest.approx(spearmanr(live, shadow).statistic)
    comparison.reset()
    assert comparison.summary()["records"] == 0


def test_the_guard_names_every_bound_the_evidence_misses(pair):
    live, challenger = pair
    a, b = Bundle.load(live, model=False), Bundle.load(challenger, model=False)
    guard = Guard()
    assert judge(evidence_for(live, challenger), Path("e.json"), a, b, guard) == []
    bad = evidence_for(
        live,
        challenger,
        alert_rate={"live": 0.02, "shadow": 0.09},
        alert_jaccard=0.3,
        drift={"records": 2000, "score_psi": 0.4, "feature_psi_max": 0.3, "feature_max": "f2"},
        written_at_s=time.time() - 7200,
    )
    reasons = judge(bad, Path("e.json"), a, b, guard)
    assert len(reasons) == 5, reasons
    assert "more than --max-age" in reasons[0]
    assert "rise 4.41x" in reasons[1] and "--max-change 3x" in reasons[1]
    assert "Jaccard) 0.300 below --min-overlap 0.5" in reasons[2]
    assert "score PSI 0.400" in reasons[3] and "feature f2 PSI 0.300" in reasons[4]
    # evidence about other bundles, or too few records, is no evidence
    stale = evidence_for(challenger, live, window={"records": 10, "size": 10000})
    reasons = judge(stale, Path("e.json"), a, b, guard)
    assert "the evidence is about model" in reasons[0] and "compared with live" in reasons[1]
    assert "fewer than --min-records 1000" in reasons[2] and len(reasons) == 3
    assert "no shadow evidence at e.json" in judge(None, Path("e.json"), a, b, guard)[0]


def test_promote_switches_the_link_records_it_and_rolls_back(pair, tiny_bundle):
    live, challenger = pair
    evidence = challenger.parent / "fraud-v2.shadow.json"
    evidence.write_text(json.dumps(evidence_for(live, challenger)))
    result = cli("promote", live, challenger)
    assert result.exit_code == 0, result.output
    assert "alert rate" in result.output and "promoted" in result.output
    assert os.readlink(live) == "fraud.releases/1-c0ffee000002"
    assert Bundle.load(live, model=False).model_version == "c0ffee000002"
    releases = sorted(p.name for p in (live.parent / "fraud.releases").iterdir())
    version = Bundle.load(tiny_bundle, model=False).model_version
    assert releases == [".lock", f"0-{version}", "1-c0ffee000002", "promotions.json"]
    # promoting again the bundle that is live is refused; rollback restores the first one
    again = cli("promote", live, live.parent / "fraud.releases" / "1-c0ffee000002")
    assert again.exit_code == 2 and "is the live bundle already" in again.output
    rolled = cli("promote", live, "--rollback")
    assert rolled.exit_code == 0, rolled.output
    assert os.readlink(live).startswith("fraud.releases/0-")
    history = cli("promote", live, "--history").output.splitlines()
    assert [line.split()[1] for line in history[1:]] == ["promote", "rollback"]
    # nothing earlier than the first champion
    nothing = cli("promote", live, "--rollback")
    assert nothing.exit_code == 2 and "nothing to roll back" in nothing.output


def test_every_refusal_is_one_line_with_exit_code_2(pair, tmp_path, tiny_bundle):
    live, challenger = pair
    ops, ops_pub = key_pair(tmp_path, "ops")
    other, _ = key_pair(tmp_path, "other")
    reordered = variant(
        tiny_bundle, tmp_path / "reordered", "c0ffee000003", ["f1", "f0", "f2", "f3", "amount"]
    )
    cases = [
        ((live, challenger), "promotion refused: no shadow evidence at"),
        ((live, challenger, "--dry-run"), "promotion refused: no shadow evidence"),
        ((live, reordered), "reads other features than the live bundle"),
        ((live, "--rollback"), "nothing to roll back (never promoted"),
        ((live,), "give LIVE and CHALLENGER"),
        ((live, challenger, "--max-age", "soon"), "--max-age 'soon'"),
        ((tmp_path / "nowhere", challenger), "not a model bundle"),
    ]
    for args, message in cases:
        result = cli("promote", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    # signed live bundle: the challenger must be signed by the same (pinned) key, --force or not
    assert cli("sign", "--bundle", live, "--key", ops).exit_code == 0
    unsigned = cli("promote", live, challenger, "--force")
    assert unsigned.exit_code == 2 and "is not signed; the pinned key is" in unsigned.output
    assert cli("sign", "--bundle", challenger, "--key", other).exit_code == 0
    for pin in ((), ("--public-key", ops_pub)):
        forged = cli("promote", live, challenger, "--force", *pin)
        assert forged.exit_code == 2, forged.output
        assert "not by the pinned key" in forged.output and len(forged.output.splitlines()) == 1
    assert not live.is_symlink()
    # signed by the pinned key: --force promotes without evidence, and the copy still verifies
    assert cli("sign", "--bundle", challenger, "--key", ops).exit_code == 0
    forced = cli("promote", live, challenger, "--force", "--public-key", ops_pub)
    assert forced.exit_code == 0, forced.output
    assert "forced: no shadow evidence" in forced.output
    verified = cli("verify", "--bundle", live, "--public-key", ops_pub)
    assert verified.exit_code == 0 and "verified" in verified.output


def test_first_promotion_under_a_running_serve_is_one_switch_and_no_error(pair, caplog):
    """Serve's refresh, run as the service runs it (the bundle watcher's poll, then the
    threshold check), on either side of the first promotion of a plain live directory: no
    error, no threshold taken from the challenger, and the next poll loads the challenger."""
    live, challenger = pair
    manifest = json.loads((challenger / "manifest.json").read_text())
    manifest["thresholds"][0]["value"] *= 2  # its own history: not an extension of the live one
    (challenger / "manifest.json").write_text(json.dumps(manifest))
    serving = Bundle.load(live, model=False)  # serve loads the directory the path resolves to
    before = serving.threshold
    metrics = Metrics()
    threshold = ThresholdWatcher(serving, metrics)
    watcher = BundleWatcher(live, lambda path: Bundle.load(path, model=False), live, "live")
    caplog.set_level(logging.DEBUG)
    assert watcher.poll() is None and not watcher.switching  # a refresh polls just before...
    promoted = cli("promote", live, challenger, "--force")
    assert promoted.exit_code == 0 and live.is_symlink(), promoted.output
    threshold.refresh()  # ... and reads the threshold just after the link is placed
    reloads = metrics.registry.get_sample_value("anomaly_threshold_reloads_total")
    assert serving.threshold == before and reloads == 0
    assert watcher.poll() is None and watcher.switching  # the next refresh loads it
    loaded = wait_until(watcher.poll, timeout=30)
    assert loaded.model_version == "c0ffee000002"
    # the moment without the path (the directory moved, the link not yet there): quiet once
    os.rename(live, live.with_name("away"))
    threshold.refresh()
    assert serving.threshold == before
    # nothing above INFO in the whole sequence; a path that stays away is warned about
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []
    threshold.refresh()
    assert any(
        "cannot stat" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    )
