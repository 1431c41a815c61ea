"""Issue 19: what a new user hits in the first hour, through the `anomaly` console script.

One test (or a few) per numbered point of the issue: each runs the command a user would run
on real files and checks what they see: one `error:` line and exit code 2 for wrong input,
a `warning:` line where the result is weaker than it looks, nothing else.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from testsupport.keys import key_pair

ANOMALY = shutil.which("anomaly") or "anomaly"
COLUMNS = ["Time", "V1", "V2", "V3", "Amount", "Class"]


def anomaly(*args, env=None, timeout=300):
    """Run the console script as a user would; text output."""
    return subprocess.run(
        [ANOMALY, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for word in words:
        assert word in lines[0], lines[0]


def write_transactions(path, n=400, fraud=40, seed=0):
    """A small fraud-like CSV: Time, three features, Amount, Class (fraud rows shifted)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for i in range(n + fraud):
            shift = 4.0 if i >= n else 0.0
            v = rng.normal(size=3) + shift
            writer.writerow([i, *np.round(v, 5), round(abs(rng.normal()) * 50, 2), int(i >= n)])
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_transactions(tmp_path_factory.mktemp("newcomer") / "transactions.csv")


@pytest.fixture(scope="module")
def held_out(data):
    """A bundle trained with --holdout: (bundle, holdout file, train output)."""
    bundle, holdout = data.parent / "bundle", data.parent / "holdout.csv"
    proc = anomaly(
        "train", data, "--out", bundle, "--holdout", holdout, "--exclude", "Time",
        "--epochs", "2", "--hidden", "16,8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return bundle, holdout, proc


# 1 ---------------------------------------------------------------------------------------
def test_1_an_exclude_typo_is_refused_before_training(data, tmp_path):
    proc = anomaly("train", data, "--exclude", "Timee", "--out", tmp_path / "b", "--epochs", "1")
    assert_one_line_error(proc, "Timee", "not found")
    assert not (tmp_path / "b").exists()


def test_1_label_column_none_says_the_label_becomes_a_feature(data, tmp_path):
    proc = anomaly(
        "train", data, "--label-column", "none", "--exclude", "Time",
        "--out", tmp_path / "b", "--epochs", "1", "--hidden", "8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "--label-column none" in line]
    assert len(warnings) == 1 and "Class" in warnings[0] and "--exclude Class" in warnings[0]


# 2 ---------------------------------------------------------------------------------------
def test_2_holdout_keeps_rows_out_of_training_and_the_training_file_is_flagged(held_out, data):
    bundle, holdout, train = held_out
    with open(data) as fh:
        all_rows = list(csv.DictReader(fh))
    with open(holdout) as fh:
        held_rows = list(csv.DictReader(fh))
    assert len(held_rows) == round(0.3 * len(all_rows))
    assert {r["Class"] for r in held_rows} == {"0", "1"}  # every class, for evaluate
    manifest = json.loads((bundle / "manifest.json").read_text())
    trained_normals = sum(r["Class"] == "0" for r in all_rows) - sum(
        r["Class"] == "0" for r in held_rows
    )
    t = manifest["training"]
    assert t["n_train"] + t["n_validation"] + t["n_calibration"] == trained_normals
    assert f"held out {len(held_rows)} of {len(all_rows)} rows" in train.stdout

    on_holdout = anomaly("drift", "--bundle", bundle, holdout)
    assert on_holdout.returncode == 0, on_holdout.stderr
    assert "warning" not in on_holdout.stderr
    on_training = anomaly("evaluate", "--bundle", bundle, data)
    assert on_training.returncode == 0, on_training.stderr
    assert "trained on" in on_training.stderr and "--holdout" in on_training.stderr


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory):
    """A 1-epoch image bundle trained through the CLI on 60 PNGs: (bundle, images, train)."""
    root = tmp_path_factory.mktemp("images")
    _write_pngs(root / "images", 60)
    bundle = root / "b"
    train = anomaly(
        "train", "--images", root / "images", "--out", bundle, "--epochs", "1", "--quiet"
    )
    assert train.returncode == 0, train.stderr
    return bundle, root / "images", train


# 3 ---------------------------------------------------------------------------------------
def _serve_with_no_broker(bundle):
    """``anomaly serve`` pointed at a port nothing listens on: (process, port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = anomaly(
        "serve", "--bundle", bundle, "--bootstrap-servers", f"127.0.0.1:{port}",
        "--input-topic", "in", "--alert-topic", "alerts", "--dlq-topic", "dlq",
        "--group", "g", "--metrics-port", "0", timeout=120,
    )  # fmt: skip
    return proc, port


def test_3_serve_with_no_broker_is_one_line_and_exit_2(held_out):
    started = time.monotonic()
    proc, port = _serve_with_no_broker(held_out[0])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30


def test_3_serve_with_an_image_bundle_points_to_score_images_before_the_broker(image_bundle):
    # no broker either: the bundle is refused first
    proc, _ = _serve_with_no_broker(image_bundle[0])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]  # serve's own log lines may precede it
    assert "trained on images" in errors[0] and "`anomaly score-images`" in errors[0]
    assert "broker" not in errors[0]


def test_serve_help_says_what_each_value_looks_like_and_which_are_required():
    """Serve's options are strings to click (the config module converts them), but --help
    shows what a value looks like and marks the settings serve cannot start without."""
    text = " ".join(anomaly("serve", "--help").stdout.split())
    for flag, shape in (
        ("--bundle", "PATH"),
        ("--max-batch", "INTEGER"),
        ("--max-wait-ms", "MS"),
        ("--delivery-timeout-s", "SECONDS"),
        ("--alert-fields", "A,B,..."),
    ):
        assert f"{flag} {shape} " in text, flag
    required = text.count("[required, or from ANOMALY_* / --config]")
    assert required == 5  # bundle, input, alert and dead-letter topics, group


# 4 ---------------------------------------------------------------------------------------
def test_4_a_backend_that_is_not_installed_is_one_line(held_out, tmp_path):
    assert "torch" not in anomaly("--help").stdout
    proc = anomaly(
        "score", "--bundle", held_out[0], held_out[1], "--out", tmp_path / "s.csv",
        env={"KERAS_BACKEND": "torch"},
    )  # fmt: skip
    assert_one_line_error(proc, "torch")


# 5 ---------------------------------------------------------------------------------------
def test_5_log1p_of_a_column_that_is_not_a_feature_is_one_line(data, tmp_path):
    proc = anomaly("train", data, "--log1p", "Amnt", "--out", tmp_path / "b", "--epochs", "1")
    assert_one_line_error(proc, "--log1p", "Amnt", str(data))


# 6 ---------------------------------------------------------------------------------------
def _scores_file(path, bundle):
    """`anomaly score`-style scores: 10 % above the bundle's live threshold."""
    live = json.loads((bundle / "manifest.json").read_text())["thresholds"][-1]["value"]
    scores = np.r_[np.linspace(0, live * 0.9, 90), np.linspace(live * 1.1, live * 2, 10)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "score"])
        writer.writerows([i, s] for i, s in enumerate(scores))
    return path


def test_6_dry_run_says_the_guard_would_refuse_and_a_fall_to_zero_is_named(held_out, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(held_out[0], bundle)
    scores = _scores_file(tmp_path / "scores.csv", bundle)
    before = (bundle / "manifest.json").read_bytes()
    args = ("threshold", "--bundle", bundle, "--scores", scores, "--method", "quantile")
    dry = anomaly(*args, "--target-fpr", "0.0001", "--dry-run")
    assert_one_line_error(dry, "dry run", "refuse", "fall to 0", "--min-alert-rate")
    assert "x (" not in dry.stderr  # no smoothed "4x" for a fall to nothing
    real = anomaly(*args, "--target-fpr", "0.0001")
    assert_one_line_error(real, "threshold unchanged", "fall to 0", "--min-alert-rate")
    assert (bundle / "manifest.json").read_bytes() == before
    fine = anomaly(*args, "--target-fpr", "0.05", "--dry-run")
    assert fine.returncode == 0 and "dry run: bundle unchanged" in fine.stdout


# 7 ---------------------------------------------------------------------------------------
def test_7_a_threshold_change_signed_with_another_key_is_refused(held_out, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(held_out[0], bundle)
    (ops, ops_pub), (other, _) = key_pair(tmp_path, "ops"), key_pair(tmp_path, "other")
    assert anomaly("sign", "--bundle", bundle, "--key", ops).returncode == 0
    proc = anomaly("threshold", "--bundle", bundle, "--rollback", "v1", "--sign-key", other)
    assert_one_line_error(proc, "not the key that signed")
    assert anomaly("verify", "--bundle", bundle, "--public-key", ops_pub).returncode == 0
    same = anomaly("threshold", "--bundle", bundle, "--rollback", "v1", "--sign-key", ops)
    assert same.returncode == 0, same.stderr
    assert anomaly("verify", "--bundle", bundle, "--public-key", ops_pub).returncode == 0


# 8 ---------------------------------------------------------------------------------------
def test_8_an_existing_out_dir_is_refused_before_training(held_out, data):
    # 5000 epochs would take far longer than the timeout if training started
    proc = anomaly("train", data, "--out", held_out[0], "--epochs", "5000", timeout=60)
    assert_one_line_error(proc, str(held_out[0]), "choose a new --out")


# 9 ---------------------------------------------------------------------------------------
def _write_pngs(folder, n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = (rng.random((8, 8)) * 60 + 100).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")


def test_9_every_unreadable_training_image_is_named_in_one_run(tmp_path):
    _write_pngs(tmp_path / "images", 20)
    for name in ("bad1.png", "bad2.png"):
        (tmp_path / "images" / name).write_text("not a png")
    proc = anomaly("train", "--images", tmp_path / "images", "--out", tmp_path / "b")
    assert_one_line_error(proc, "bad1.png", "bad2.png", "2 files")


def test_9_small_calibration_split_and_collapsed_generator_are_said(image_bundle, tmp_path):
    trained, images, train = image_bundle
    warning = [line for line in train.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "calibration rows" in warning[0], train.stderr
    # as `anomaly info` would show it after a collapse (the manifest's log is not hashed)
    bundle = shutil.copytree(trained, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["training"]["log"].append({"epoch": 99, "events": ["generator_mode_collapse"]})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert "generator_mode_collapse" in anomaly("info", "--bundle", bundle).stdout
    report = anomaly("score-images", "--bundle", bundle, images, "--out", tmp_path / "r", "--quiet")
    assert report.returncode == 0, report.stderr
    assert "generator collapsed" in report.stderr
    assert "generator collapsed" in (tmp_path / "r" / "index.html").read_text()


# 10 and cold start ------------------------------------------------------------------------
def test_10_train_output_has_no_terminal_codes_and_no_per_epoch_log(held_out):
    train = held_out[2]
    assert "\x1b[" not in train.stdout + train.stderr
    assert "INFO" not in train.stderr and "epoch 1 " not in train.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("info", "--bundle", "{bundle}"),
        ("threshold", "--bundle", "{bundle}", "--history"),
        ("threshold", "--bundle", "{bundle}", "--rollback", "v1", "--dry-run"),
        ("threshold", "--bundle", "{bundle}", "--scores", "{scores}", "--dry-run"),
        ("verify", "--bundle", "{bundle}"),
        ("score", "--bundle", "{missing}", "{data}", "--out", "{out}"),
        ("train", "{data}", "--log1p", "nope", "--out", "{out}"),
    ],
)
def test_10_commands_that_need_no_networks_never_import_keras(held_out, data, tmp_path, args):
    """The seconds Keras takes to import are spent only where a network runs."""
    values = {
        "bundle": held_out[0],
        "missing": tmp_path / "missing",
        "data": data,
        "out": tmp_path / "out",
        "scores": _scores_file(tmp_path / "scores.csv", held_out[0]),
    }
    argv = [a.format(**values) for a in args]
    code = (
        "import sys\n"
        "from anomaly.cli import main\n"
        f"try:\n    main({argv!r})\n"
        "except SystemExit:\n    pass\n"
        "print('keras loaded' if 'keras' in sys.modules else 'no keras', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stderr.strip().endswith("no keras"), proc.stderr


def test_info_refuses_a_tampered_bundle(held_out, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(held_out[0], bundle)
    with open(bundle / "model" / "detector.json", "a") as fh:
        fh.write(" ")
    assert_one_line_error(anomaly("info", "--bundle", bundle), "checksum mismatch")


# smaller: score skips and lists bad rows when asked --------------------------------------
def test_score_skip_bad_rows_scores_the_rest_and_lists_each_bad_row(held_out, tmp_path):
    bundle, holdout, _ = held_out
    lines = holdout.read_text().splitlines()
    bad = list(lines)
    bad[3] = bad[3].replace(bad[3].split(",")[2], "oops", 1)  # data row 3: not a number
    bad[7] = bad[7] + ",1"  # data row 7: one field too many
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(bad) + "\n")
    refused = anomaly("score", "--bundle", bundle, broken, "--out", tmp_path / "refused.csv")
    # without the flag the first problem the reader meets stops the file, as before
    assert_one_line_error(refused, "row 7", "fields", "--skip-bad-rows")
    assert not (tmp_path / "refused.csv").exists()

    out = tmp_path / "scores.csv"
    proc = anomaly("score", "--bundle", bundle, broken, "--out", out, "--skip-bad-rows")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "skipped 2 unreadable rows" in proc.stderr
    with open(tmp_path / "scores.errors.csv", newline="") as fh:
        errors = list(csv.DictReader(fh))
    assert [e["row"] for e in errors] == ["3", "7"]
    assert "oops" in errors[0]["problem"] and "fields" in errors[1]["problem"]
    clean = tmp_path / "clean.csv"
    assert anomaly("score", "--bundle", bundle, holdout, "--out", clean).returncode == 0
    with open(clean, newline="") as fh:
        expected = {r["id"]: r["score"] for r in csv.DictReader(fh)}
    with open(out, newline="") as fh:
        got = {r["id"]: r["score"] for r in csv.DictReader(fh)}
    assert len(got) == len(expected) - 2 and set(expected) - set(got) == {"3", "7"}
    # the same rows, the same scores (float32 networks: a batch of another size may round
    # the last digits differently)
    ids = sorted(got)
    np.testing.assert_allclose(
        [float(got[i]) for i in ids], [float(expected[i]) for i in ids], rtol=1e-4, atol=1e-5
    )


# smaller: a slow scoring command says why, on a terminal only ------------------------------
def _on_a_terminal(args):
    """Run ``anomaly ARGS`` with stderr on a pseudo-terminal; (exit code, what stderr got)."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [ANOMALY, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_scoring_on_a_terminal_says_why_it_takes_seconds_and_pipes_stay_quiet(held_out, tmp_path):
    bundle, holdout, _ = held_out
    args = ("score", "--bundle", bundle, holdout, "--out", tmp_path / "s.csv")
    code, said = _on_a_terminal(args)
    assert code == 0 and "loading the model's networks" in said, said
    piped = anomaly(*args)
    assert piped.returncode == 0 and "loading" not in piped.stderr
    code, said = _on_a_terminal(("info", "--bundle", bundle))  # no networks: nothing to say
    assert code == 0 and "loading" not in said, said
