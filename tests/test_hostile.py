"""Hostile input, beyond what test_records / test_bundle / test_metrics / test_config cover.

- the image loader fuzzed with hypothesis: any bytes under any supported file name give frames
  in [0, 1] or a classified ImageReadError, never another exception;
- huge and deeply nested JSON records are refused before the JSON parser sees them;
- a bundle whose ``.keras`` file carries a Lambda layer (arbitrary code) or whose array file
  carries a pickle is refused, with its checksums made consistent (an attacker who controls
  the whole bundle directory), and the Lambda's code never runs;
- the metrics server binds only the configured address, in-process and in a running serve;
- SASL / SSL passwords given through the environment never reach the logs (DEBUG, JSON),
  /metrics, /healthz, /readyz, the bundle files, the output topics or the command line of a
  running ``anomaly serve``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import struct
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomaly.bundle.bundle import MANIFEST, Bundle
from anomaly.errors import BundleError, RecordError
from anomaly.imaging.readers import ImageReadError, read_file
from anomaly.stream import records
from anomaly.stream.config import load_serve_config
from anomaly.stream.metrics import Metrics, MetricsServer
from anomaly.topics import produce
from testsupport.data import FEATURES
from testsupport.kafka import new_topics, read_topic, wait_until
from testsupport.reliability import Serve, make_records

IMAGE_REASONS = {
    "unreadable",
    "truncated",
    "no_pixel_data",
    "bit_depth",
    "corrupt_pixel_data",
    "unsupported_compression",
    "not_an_image_array",
}


# --- the image loader -----------------------------------------------------------------------
def _png(mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    size = (6, 5)
    Image.fromarray(np.arange(30, dtype=np.uint8).reshape(5, 6)).convert(mode).resize(size).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def _idx() -> bytes:
    pixels = np.arange(2 * 4 * 3, dtype=np.uint8)
    return b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 4, 3) + pixels.tobytes()


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4))
    return buffer.getvalue()


def _dicom() -> bytes:
    import tempfile

    from testsupport.images import write_dicom

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.dcm"
        write_dicom(path, np.arange(64, dtype=np.uint16).reshape(8, 8), "MONOCHROME2")
        return path.read_bytes()


SEEDS = {
    "x.png": _png(),
    "x.jpg": _png("RGB"),
    "x.tif": _png(),
    "x.dcm": _dicom(),
    "x.npz": _npz(),
    "x-idx3-ubyte": _idx(),
    "x-idx3-ubyte.gz": gzip.compress(_idx(), mtime=0),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid file with a few bytes overwritten, then maybe truncated or extended."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.binary(max_size=64))
    return bytes(data[:cut]) + tail if draw(st.booleans()) else bytes(data) + tail


def _check_image_file(folder: Path, name: str, payload: bytes) -> None:
    path = folder / name
    path.write_bytes(payload)
    try:
        frames = list(read_file(path))
    except ImageReadError as error:
        assert error.reason in IMAGE_REASONS, error.reason
        assert str(error)
        return
    for _, frame in frames:
        assert frame.dtype == np.float32 and frame.ndim == 3 and frame.shape[2] in (1, 3, 4)
        assert np.isfinite(frame).all() and frame.min() >= 0.0 and frame.max() <= 1.0


@pytest.mark.parametrize("name", sorted(SEEDS))
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_bytes_in_an_image_file_give_frames_or_a_classified_error(tmp_path, name, data):
    seed = SEEDS[name]
    payload = data.draw(st.one_of(mutated(seed), st.binary(max_size=300)))
    _check_image_file(tmp_path, name, payload)


def _npz_central_directory_patched(offset: int, value: int) -> bytes:
    """The NPZ seed with one 16-bit field of its zip central directory entry overwritten."""
    data = bytearray(_npz())
    struct.pack_into("<H", data, data.index(b"PK\x01\x02") + offset, value)
    return bytes(data)


def _gzip_corrupted() -> bytes:
    data = bytearray(gzip.compress(_idx(), mtime=0))
    data[14] ^= 0xFF  # inside the deflate stream
    return bytes(data)


def _valid_dicom_bytes(old: bytes, new: bytes) -> bytes:
    """A small valid DICOM file with one byte string replaced (it must occur exactly once)."""
    from testsupport.images import write_dicom

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.dcm"
        write_dicom(path, np.full((4, 4), 100), slope=1.5)
        data = path.read_bytes()
    assert data.count(old) == 1
    return data.replace(old, new)


# What the fuzzer found, pinned: each was an uncaught exception (or an allocation of the size
# the header claimed) before imaging.py classified it.
@pytest.mark.parametrize(
    ("name", "payload"),
    [
        # IDX headers claiming absurd sizes must not allocate or overflow
        ("big-idx3-ubyte", b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 9)),
        ("big-idx4-ubyte", b"\x00\x00\x0e\x04" + struct.pack(">4I", 1, 2**31, 2**31, 3)),
        ("zero-idx3-ubyte", b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 0, 0)),
        ("tall-idx3-ubyte", b"\x00\x00\x08\x03" + struct.pack(">3I", 1, 2**24, 6)),
        ("bad-idx3-ubyte.gz", _gzip_corrupted()),
        ("encrypted.npz", _npz_central_directory_patched(8, 1)),
        ("method99.npz", _npz_central_directory_patched(10, 99)),
        # DICOM meta headers that pydicom only rejects when the element is first read
        ("unknown-vr.dcm", b"\x00" * 128 + b"DICM\x02\x00\x00\x00AL\x04\x00\x00\x00\x00\x00"),
        # RescaleSlope (free-text DS) with a NUL byte; SOPInstanceUID with an unknown VR
        ("mangled-slope.dcm", _valid_dicom_bytes(b"1.5", b"\x00.5")),
        ("unknown-vr-late.dcm", _valid_dicom_bytes(b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x00AI")),
        ("short-ul.dcm", b"\x00" * 128 + b"DICM\x02\x00\x00\x00UL\x04\x00\xce"),
        (
            "huge.png",
            b"\x89PNG\r\n\x1a\n"
            + b"\x00\x00\x00\rIHDR"
            + struct.pack(">II", 2**31 - 1, 2**31 - 1)
            + b"\x08\x00\x00\x00\x00",
        ),
    ],
)
def test_hostile_headers_are_classified(tmp_path, name, payload):
    _check_image_file(tmp_path, name, payload)


# --- records: refused before the parser ---------------------------------------------------------
class _NoParser:
    """Stands in for orjson: the test fails if the decoder hands it the value."""

    JSONDecodeError = ValueError

    @staticmethod
    def loads(value: bytes) -> None:
        raise AssertionError(f"the parser saw a {len(value)}-byte hostile value")


def test_huge_record_is_refused_by_size_without_parsing(monkeypatch):
    value = b'{"f0": "' + b"x" * (64 * 1024 * 1024) + b'"}'  # 64 MiB of valid JSON
    monkeypatch.setattr(records, "orjson", _NoParser)
    decoder = records.RecordDecoder(FEATURES)
    started = time.perf_counter()
    with pytest.raises(RecordError) as info:
        decoder.decode(value)
    assert info.value.reason == "oversized"
    assert time.perf_counter() - started < 0.05  # a length check, not a scan


@settings(max_examples=150, deadline=None)
@given(
    depth=st.integers(min_value=3, max_value=20_000),
    opener=st.sampled_from([b"[", b'{"a":']),
    noise=st.text(alphabet='{}[]"\\ ', max_size=10),
)
def test_deeply_nested_records_are_refused_without_parsing(depth, opener, noise):
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * (depth - 1) + b"1" + closer * (depth - 1)
    quoted = json.dumps(noise).encode()  # brackets inside a string never count
    value = b'{"f0": ' + nested + b', "id": ' + quoted + b"}"
    decoder = records.RecordDecoder(FEATURES, max_bytes=len(value))
    original, records.orjson = records.orjson, _NoParser
    try:
        with pytest.raises(RecordError) as info:
            decoder.decode(value)
    finally:
        records.orjson = original
    assert info.value.reason == "too_deep"


# --- bundles carrying code ----------------------------------------------------------------------
@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    return path


def _reseal(bundle: Path, relative: str) -> None:
    """Rewrite the manifest checksum of ``relative``: the attacker controls the directory."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][relative] = hashlib.sha256((bundle / relative).read_bytes()).hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_lambda_layer_bundle_is_refused_and_its_code_never_runs(bundle_copy, tmp_path):
    import keras

    marker = tmp_path / "payload-ran"
    original = keras.saving.load_model(bundle_copy / "model" / "encoder.keras", compile=False)

    # A Python lambda is saved as bytecode: loading it runs whatever the author wrote.
    # The marker path is a constant inside the lambda's own bytecode (no defaults/closure).
    payload = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")

    inputs = keras.Input(shape=original.input_shape[1:])
    hostile = keras.Model(inputs, original(keras.layers.Lambda(payload)(inputs)))
    hostile.save(bundle_copy / "model" / "encoder.keras")
    _reseal(bundle_copy, "model/encoder.keras")
    marker.unlink()  # building the model ran it once, here in the test

    with pytest.raises(BundleError, match="cannot load the model safely") as info:
        Bundle.load(bundle_copy)
    assert "Lambda" in str(info.value) and "safe_mode" in str(info.value)
    assert not marker.exists()
    # Control: the file really carries live code; an unsafe loader would have run it.
    keras.saving.load_model(bundle_copy / "model" / "encoder.keras", safe_mode=False)
    assert marker.exists()


def test_pickle_in_a_bundle_array_is_refused(bundle_copy):
    np.savez(bundle_copy / "model" / "latent.npz", mean=np.array([{"x": 1}], dtype=object))
    _reseal(bundle_copy, "model/latent.npz")
    with pytest.raises(BundleError, match="cannot load the model safely.*pickle"):
        Bundle.load(bundle_copy)


# --- the metrics server's address ---------------------------------------------------------------
def _answers(host: str, port: int, path: str = "/healthz") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def test_metrics_server_binds_the_configured_address_only():
    server = MetricsServer(Metrics(), "127.0.0.2", 0).start()
    try:
        host, port = server.address
        assert host == "127.0.0.2" and _answers("127.0.0.2", port)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=3).close()
    finally:
        server.stop()


def test_metrics_default_address_is_loopback():
    config = load_serve_config(
        {"bundle": "b", "input_topic": "i", "alert_topic": "a", "dlq_topic": "d", "group": "g"},
        env={},
    )
    assert config.metrics_host == "127.0.0.1"


# --- secrets end to end -------------------------------------------------------------------------
SASL_SECRET = "sasl-Pa55-" + "q7Zt0"
SSL_SECRET = "ssl-Key-" + "Vv93x"


@pytest.mark.kafka
def test_secrets_never_leave_a_running_serve(kafka_bootstrap, tiny_bundle, tmp_path):
    topics = new_topics(kafka_bootstrap, partitions=2)
    items = list(make_records(300, seed=9))
    produce(kafka_bootstrap, topics["input_topic"], items)
    env = {
        "ANOMALY_SASL_PASSWORD": SASL_SECRET,
        "ANOMALY_SASL_USERNAME": "svc-scorer",
        "ANOMALY_KAFKA__SSL_PASSWORD": SSL_SECRET,
    }
    serve = Serve(
        kafka_bootstrap,
        tiny_bundle,
        topics,
        tmp_path / "serve.log",
        "--metrics-host",
        "127.0.0.2",
        env=env,
    )
    bodies: list[bytes] = []
    try:
        base = f"http://127.0.0.2:{serve.port}"

        def consumed_all() -> bool:
            try:
                with urllib.request.urlopen(base + "/metrics", timeout=3) as response:
                    text = response.read()
            except (urllib.error.URLError, OSError):
                return False
            return (
                f'anomaly_records_consumed_total{{topic="{topics["input_topic"]}"}} 300.0'.encode()
                in text
            )

        assert wait_until(consumed_all, 90, 0.3), serve.log()
        for path in ("/metrics", "/healthz", "/readyz", "/nope"):
            try:
                with urllib.request.urlopen(base + path, timeout=3) as response:
                    bodies.append(response.read())
            except urllib.error.HTTPError as error:
                bodies.append(error.read())
        assert not _answers("127.0.0.1", serve.port), "metrics must bind 127.0.0.2 only"
        cmdline = Path(f"/proc/{serve.process.pid}/cmdline").read_bytes()
        assert serve.terminate() == 0, serve.log()
    finally:
        serve.stop()

    log = serve.log_path.read_text()
    assert "sasl_password='***'" in log and "'ssl_password': '***'" in log  # loaded, redacted
    assert '"level": "DEBUG"' in log  # the most talkative level was on
    outputs = [
        (m.key or b"") + (m.value or b"") + b"".join(k.encode() + (v or b"") for k, v in m.headers)
        for topic in ("alert_topic", "dlq_topic", "scores_topic")
        for m in read_topic(kafka_bootstrap, topics[topic])
    ]
    assert len(outputs) > 300  # scores for every good record, dead letters, alerts
    bundle_files = [p.read_bytes() for p in tiny_bundle.rglob("*") if p.is_file()]
    for secret in (SASL_SECRET, SSL_SECRET):
        needle = secret.encode()
        assert needle not in log.encode()
        assert needle not in cmdline
        assert all(needle not in body for body in bodies)
        assert all(needle not in blob for blob in bundle_files)
        assert all(needle not in blob for blob in outputs)
