"""Signed bundles (OpenSSF model-signing, a local EC key pair): sign, verify, and every
tampering refused by load, score, serve and verify with a one-line reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from anomaly.bundle.bundle import MANIFEST, Bundle
from anomaly.cli import main
from anomaly.errors import BundleError
from testsupport.data import FEATURES
from testsupport.keys import key_pair


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def keys(tmp_path):
    return key_pair(tmp_path, "ops")


@pytest.fixture
def signed(tiny_bundle, tmp_path, keys):
    path = tmp_path / "signed"
    shutil.copytree(tiny_bundle, path)
    result = run("sign", "--bundle", path, "--key", keys[0])
    assert result.exit_code == 0, result.output
    return path


def edit_manifest(path, change):
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))


def tamper_scaler(path):
    edit_manifest(path, lambda m: m["preprocessing"]["centre"].__setitem__(0, 0.5))


def tamper_threshold(path):
    edit_manifest(path, lambda m: m["thresholds"][0].__setitem__("value", 1e6))


def tamper_weights(path):
    weights = sorted((path / "model").glob("*.keras"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))


def tamper_rename(path):
    bank = sorted((path / "model").glob("memory_*"))[0]
    bank.rename(bank.with_name("renamed_" + bank.name))


TAMPERS = {
    "scaler": (tamper_scaler, "manifest.json changed after signing"),
    "threshold": (tamper_threshold, "manifest.json changed after signing"),
    "weights": (tamper_weights, ".keras changed after signing"),
    "rename": (tamper_rename, "not signed: model/renamed_memory_"),
}


def test_sign_then_verify_with_the_shipped_and_a_pinned_key(signed, keys, tmp_path):
    verified = run("verify", "--bundle", signed, "--public-key", keys[1])
    assert verified.exit_code == 0, verified.output
    assert "verified:" in verified.output and f"pinned key {keys[1]}" in verified.output
    assert "shipped in the bundle" in run("verify", "--bundle", signed).output
    assert Bundle.load(signed).signer is not None
    assert "signature    signed" in run("info", "--bundle", signed).output
    _, stranger = key_pair(tmp_path, "stranger")
    other = run("verify", "--bundle", signed, "--public-key", stranger)
    assert other.exit_code == 2 and "not signed by the key in" in other.output
    with pytest.raises(BundleError, match="not signed by the key"):
        Bundle.load(signed, public_key=stranger)


def test_an_unsigned_bundle_loads_unless_a_signature_is_required(tiny_bundle):
    assert Bundle.load(tiny_bundle).signer is None
    with pytest.raises(BundleError, match="not signed and a signature is required"):
        Bundle.load(tiny_bundle, require_signature=True)
    result = run("verify", "--bundle", tiny_bundle)
    assert result.exit_code == 2 and "not signed" in result.output


def serve_in_thread(bundle, keys=None, **extra):
    """``anomaly serve``'s entry point in a worker thread (no signal handlers)."""
    from anomaly.stream.config import load_serve_config
    from anomaly.stream.startup import serve

    config = load_serve_config(
        {
            "bundle": str(bundle),
            "input_topic": "in",
            "alert_topic": "alerts",
            "dlq_topic": "dlq",
            "group": "g",
            "bootstrap_servers": "127.0.0.1:1",
            "metrics_port": 0,
            **extra,
        },
        env={},
    )
    outcome = {}

    def target():
        try:
            outcome["status"] = serve(config)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    return outcome


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampering_is_refused_by_load_score_serve_and_verify(signed, tamper, tmp_path, keys):
    change, reason = TAMPERS[tamper]
    change(signed)
    with pytest.raises(BundleError, match="signature check failed") as raised:
        Bundle.load(signed)
    assert reason in str(raised.value) and "\n" not in str(raised.value)
    data = tmp_path / "rows.csv"
    data.write_text(",".join(FEATURES) + "\n" + "0.1,0.2,0.3,0.4,10\n")
    scored = run("score", "--bundle", signed, data, "--out", tmp_path / "out.csv")
    assert scored.exit_code == 2 and reason in scored.output
    assert len(scored.output.strip().splitlines()) == 1
    verified = run("verify", "--bundle", signed, "--public-key", keys[1])
    assert verified.exit_code == 2 and reason in verified.output
    served = serve_in_thread(signed)
    assert isinstance(served.get("error"), BundleError) and reason in str(served["error"])


def test_serve_cli_refuses_an_edited_manifest_in_one_line(signed, keys):
    tamper_scaler(signed)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly.cli",
            "serve",
            "--bundle",
            str(signed),
            "--input-topic",
            "in",
            "--alert-topic",
            "a",
            "--dlq-topic",
            "d",
            "--group",
            "g",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--metrics-port",
            "0",
            "--public-key",
            str(keys[1]),
            "--require-signature",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "manifest.json changed after signing" in errors[0]


def test_threshold_changes_on_a_signed_bundle_are_re_signed(signed, keys, tmp_path, caplog):
    reader = Bundle.load(signed, public_key=keys[1])
    refused = run("threshold", "--bundle", signed, "--rollback", "v1")
    assert refused.exit_code == 2 and "pass --sign-key" in refused.output
    applied = run("threshold", "--bundle", signed, "--rollback", "v1", "--sign-key", keys[0])
    assert applied.exit_code == 0, applied.output
    assert run("verify", "--bundle", signed, "--public-key", keys[1]).exit_code == 0
    assert reader.refresh_threshold() is True and reader.threshold_version == 2
    # a hand edit of the history after that is not picked up by a running reader
    edit_manifest(signed, lambda m: m["thresholds"].append({**m["thresholds"][-1], "value": 9e9}))
    assert reader.refresh_threshold() is False
    assert reader.threshold_version == 2 and "does not verify" in caplog.text


def test_a_bundle_named_by_a_relative_path_signs_and_verifies(
    tiny_bundle, tmp_path, keys, monkeypatch
):
    shutil.copytree(tiny_bundle, tmp_path / "models" / "fraud")
    monkeypatch.chdir(tmp_path)
    assert run("sign", "--bundle", "models/fraud", "--key", keys[0]).exit_code == 0
    verified = run("verify", "--bundle", "models/fraud", "--public-key", keys[1])
    assert verified.exit_code == 0, verified.output
    assert Bundle.load("models/fraud").signer is not None
