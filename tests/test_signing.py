"""Signed bundles (OpenSSF model-signing, a local EC key pair): sign, verify, and every
tampering refused by load, score, serve and verify with a one-line reason."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from anomaly.bundle.bundle import MANIFEST, Bundle
from anomaly.bundle.signing import sign_bundle, verify_bundle
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


# Our verifier against model_signing's ------------------------------------------------------
# anomaly verifies key-pair signatures itself (model_signing's root import loads the Sigstore
# stack, ~0.8 s); these check it refuses everything model_signing refuses, side by side.
def model_signing_accepts(path, public_key):
    """The verification anomaly did before: model_signing's, with the same hashing config."""
    from model_signing import hashing, verifying

    root = path.resolve()
    ignored = [root / name for name in ("bundle.sig", "bundle.sig.pub", ".bundle.sig.tmp")]
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public_key).set_hashing_config(
            hashing.Config().set_ignored_paths(paths=ignored)
        ).verify(root, path / "bundle.sig")
    except Exception:  # noqa: BLE001 - any refusal
        return False
    return True


def anomaly_accepts(path, public_key):
    try:
        verify_bundle(path, public_key)
    except BundleError as exc:
        assert "\n" not in str(exc)
        return False
    return True


def edit_signature(path, change):
    bundle = json.loads((path / "bundle.sig").read_text())
    change(bundle)
    (path / "bundle.sig").write_text(json.dumps(bundle))


def edit_statement(path, change):
    def rewrite(bundle):
        envelope = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"]))
        change(statement)
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    edit_signature(path, rewrite)


def restate_manifest(path):
    """A forger edits the manifest and puts its new digest (and root digest) in the
    signed statement, leaving the signature as it was."""
    tamper_threshold(path)

    def change(statement):
        resources = statement["predicate"]["resources"]
        for resource in resources:
            if resource["name"] == MANIFEST:
                resource["digest"] = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
        root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources))
        statement["subject"][0]["digest"]["sha256"] = root.hexdigest()

    edit_statement(path, change)


def flip_signature(bundle):
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()


def add_file(relative, data=b"x"):
    def change(path):
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_bytes(data)

    return change


def remove_detector(path):
    (path / "model" / "detector.json").unlink()


def move_into_subfolder(path):
    (path / "model" / "sub").mkdir()
    (path / "model" / "detector.json").rename(path / "model" / "sub" / "detector.json")


def symlink(relative):
    def change(path):
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).symlink_to(path / MANIFEST)

    return change


def fifo(path):
    os.mkfifo(path / "model" / "pipe")


def set_key(*keys):
    def change(bundle):
        target = bundle
        for key in keys[:-2]:
            target = target[key]
        target[keys[-2]] = keys[-1]

    return change


# (change to the signed bundle, whether both verifiers accept it)
CROSS_CHECKS = {
    "untouched": (lambda path: None, True),
    "edit manifest": (tamper_scaler, False),
    "edit weights": (tamper_weights, False),
    "rename": (tamper_rename, False),
    "add file": (add_file("notes.txt"), False),
    "add hidden file": (add_file(".hidden"), False),
    "add nested file": (add_file("model/extra/x.bin"), False),
    "add empty file": (add_file("model/empty", b""), False),
    "remove file": (remove_detector, False),
    "move file": (move_into_subfolder, False),
    "add symlink": (symlink("model/link"), False),
    "symlink under .git": (symlink(".git/link"), False),
    "special file": (fifo, False),
    "file under .git (ignored by both)": (add_file(".git/HEAD"), True),
    "edit shipped key file (pinned key used)": (add_file("bundle.sig.pub", b"junk"), True),
    "restated manifest": (restate_manifest, False),
    "flip signature bit": (lambda p: edit_signature(p, flip_signature), False),
    "payload type": (
        lambda p: edit_signature(p, set_key("dsseEnvelope", "payloadType", "text/plain")),
        False,
    ),
    "media type": (
        lambda p: edit_signature(p, set_key("mediaType", "application/vnd.dev.sigstore.v0.1")),
        False,
    ),
    "other key hint": (
        lambda p: edit_signature(p, set_key("verificationMaterial", "publicKey", "hint", "ab")),
        False,
    ),
    "no key hint (older signatures)": (
        lambda p: edit_signature(p, lambda b: b["verificationMaterial"]["publicKey"].clear()),
        True,
    ),
    "no signature": (
        lambda p: edit_signature(p, set_key("dsseEnvelope", "signatures", [])),
        False,
    ),
    "not JSON": (lambda p: (p / "bundle.sig").write_text("{"), False),
    "statement type": (lambda p: edit_statement(p, set_key("_type", "x")), False),
}


@pytest.mark.parametrize("case", sorted(CROSS_CHECKS))
def test_our_verifier_and_model_signing_agree(signed, keys, case):
    change, accepted = CROSS_CHECKS[case]
    change(signed)
    assert model_signing_accepts(signed, keys[1]) is accepted
    assert anomaly_accepts(signed, keys[1]) is accepted


def test_a_wrong_or_forged_key_is_refused_by_both(signed, keys, tmp_path):
    stranger_private, stranger = key_pair(tmp_path, "stranger")
    assert not model_signing_accepts(signed, stranger)
    assert not anomaly_accepts(signed, stranger)
    # a forger re-signs an edit with their own key (and ships it): a pinned key refuses it
    tamper_threshold(signed)
    sign_bundle(signed, stranger_private)
    assert not model_signing_accepts(signed, keys[1])
    assert not anomaly_accepts(signed, keys[1])
    # the shipped key alone proves integrity, not who signed (documented)
    assert anomaly_accepts(signed, signed / "bundle.sig.pub")


def test_a_signature_made_with_model_signing_defaults_verifies(tiny_bundle, tmp_path, keys):
    from model_signing import signing

    path = tmp_path / "plain"
    shutil.copytree(tiny_bundle, path)
    signing.Config().use_elliptic_key_signer(private_key=keys[0]).sign(path, tmp_path / "s")
    shutil.move(tmp_path / "s", path / "bundle.sig")
    assert model_signing_accepts(path, keys[1]) and anomaly_accepts(path, keys[1])
    tamper_scaler(path)
    assert not model_signing_accepts(path, keys[1]) and not anomaly_accepts(path, keys[1])


STRICTER = {
    # model_signing checks the first signature only
    "a second signature": lambda b: b["dsseEnvelope"]["signatures"].append({"sig": "AA=="}),
}


@pytest.mark.parametrize("case", sorted(STRICTER))
def test_where_our_verifier_is_stricter(signed, keys, case):
    edit_signature(signed, STRICTER[case])
    assert model_signing_accepts(signed, keys[1])
    assert not anomaly_accepts(signed, keys[1])


def test_a_signature_that_exempts_files_from_the_check_is_refused(tiny_bundle, tmp_path, keys):
    """model_signing honours paths a signature says it left out; anomaly signs every file."""
    from model_signing import hashing, signing

    path = tmp_path / "exempt"
    shutil.copytree(tiny_bundle, path)
    root = path.resolve()
    exempt = [root / name for name in ("bundle.sig", MANIFEST)]
    signing.Config().use_elliptic_key_signer(private_key=keys[0]).set_hashing_config(
        hashing.Config().set_ignored_paths(paths=exempt)
    ).sign(root, path / "bundle.sig")
    tamper_threshold(path)
    assert model_signing_accepts(path, keys[1])
    with pytest.raises(BundleError, match="the signature exempts manifest.json"):
        Bundle.load(path, public_key=keys[1], model=False)


@pytest.mark.parametrize(
    "args",
    [
        ("info", "--bundle", "{bundle}"),
        ("verify", "--bundle", "{bundle}", "--public-key", "{key}"),
        ("threshold", "--bundle", "{bundle}", "--history"),
    ],
)
def test_signed_bundle_commands_never_import_model_signing(signed, keys, args):
    """Verifying a key-pair signature needs neither model_signing nor Sigstore (~0.8 s)."""
    argv = [a.format(bundle=signed, key=keys[1]) for a in args]
    code = (
        "import sys\n"
        "from anomaly.cli import main\n"
        f"try:\n    main({argv!r})\n"
        "except SystemExit as exc:\n    print('exit', exc.code, file=sys.stderr)\n"
        "heavy = ('model_signing', 'sigstore', 'sigstore_models', 'in_toto_attestation')\n"
        "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & set(heavy)),\n"
        "      file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "exit 0" in proc.stderr and "loaded: []" in proc.stderr, proc.stderr + proc.stdout
