"""The ``anomaly`` command line: a thin click layer over the package's functions.

Keras is imported lazily inside the commands so that ``--backend`` can choose the Keras
backend first and ``anomaly --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from anomaly.errors import AnomalyError, InputError

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = (".idx", ".ubyte", ".gz")
# Keras backends and the package each needs (torch is not a dependency of this project)
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax"}
# below this many calibration rows expected above the threshold, its alert rate is a guess
MIN_CALIBRATION_EXCEEDANCES = 5
# a bundle load still running after this long tells a terminal user why (see _load_bundle)
SLOW_LOAD_NOTICE_S = 1.0


class _Group(click.Group):
    """Turns user-caused errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AnomalyError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


def _csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _devices(value: str) -> int | str:
    """``--devices``: a positive count or ``all``."""
    if value.strip().lower() == "all":
        return "all"
    if value.strip().isdigit() and int(value) >= 1:
        return int(value)
    raise click.BadParameter(f"expected a positive number or 'all', got {value!r}")


def _weights(value: str | None) -> dict[str, float] | None:
    if not value:
        return None
    weights = {}
    for part in _csv_list(value):
        name, _, number = part.partition("=")
        try:
            weights[name.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"expected name=number, got {part!r}") from None
    # the detector's own list (train loads Keras right after this anyway)
    from detectors.ganomaly import IMAGE_WEIGHTS, RECORD_WEIGHTS, ROTATION

    known = tuple(dict.fromkeys([*RECORD_WEIGHTS, *IMAGE_WEIGHTS, ROTATION]))
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise click.BadParameter(
            f"unknown component {unknown[0]!r}; choose from {', '.join(known)}"
        )
    return weights


def _check_backend(backend: str) -> None:
    """A Keras backend whose package is missing fails here in one line, not in a traceback
    from the first command that loads Keras."""
    import importlib.util

    if backend not in BACKENDS:
        raise AnomalyError(
            f"Keras backend {backend!r} (--backend / KERAS_BACKEND) is not supported; "
            f"choose {' or '.join(BACKENDS)}"
        )
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        raise AnomalyError(
            f"Keras backend {backend!r} needs the {BACKENDS[backend]} package, which is not "
            f"installed (pip install {BACKENDS[backend]}), or choose another --backend"
        )


@click.group(cls=_Group)
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    default=None,
    help="Keras backend (default: KERAS_BACKEND or tensorflow).",
)
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
@click.version_option(package_name="anomaly-gan")
def main(backend: str | None, log_level: str) -> None:
    """GAN anomaly detection: train, score, evaluate, re-threshold, serve."""
    if backend:
        os.environ["KERAS_BACKEND"] = backend
    if os.environ.get("KERAS_BACKEND"):
        _check_backend(os.environ["KERAS_BACKEND"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("tensorflow").addFilter(_not_retracing)


def _not_retracing(record: logging.LogRecord) -> bool:
    """TensorFlow's tf.function retracing warning is about Keras' internals (predict on
    varying batch sizes), nothing a user can act on: it is dropped."""
    return "tf.function retracing" not in record.getMessage()


def _is_image_source(path: Path) -> bool:
    return path.is_dir() or any(s in path.name.lower() for s in IMAGE_SUFFIXES)


@main.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New bundle dir.")
@click.option("--detector", type=click.Choice(["ganomaly", "anogan"]), default="ganomaly")
@click.option("--images", is_flag=True, help="DATA is an image folder / IDX / NPZ of images.")
@click.option("--image-size", type=int, default=None, help="Resize images to this square side.")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Gray or RGB.")
@click.option(
    "--intensity",
    type=click.Choice(["none", "stretch", "zscore"]),
    default="none",
    show_default=True,
    help="Per-image intensity normalisation (scoring applies the bundle's).",
)
@click.option("--features", default=None, help="Comma-separated feature columns.")
@click.option("--exclude", default=None, help="Comma-separated columns to leave out.")
@click.option("--label-column", default="auto", show_default=True, help="'none' to disable.")
@click.option("--id-column", default="auto", show_default=True)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Analyst verdicts (CSV or JSON lines: record_id, label) joined to DATA's rows by its "
    "id column; they override the label column. Records only.",
)
@click.option(
    "--learn-from-labels/--no-learn-from-labels",
    default=True,
    show_default=True,
    help="Rows labelled as anomalies train GANomaly's label head, which votes beside the "
    "banks; --no-learn-from-labels only leaves them out of training.",
)
@click.option("--log1p", "log1p", default=None, help="Columns to signed-log1p (e.g. Amount).")
@click.option("--scaler", type=click.Choice(["standard", "robust"]), default="standard")
@click.option(
    "--epochs",
    type=click.IntRange(min=0),
    default=None,
    help="Default: 15 for records, 10 for images; 0 keeps the networks' random initial "
    "weights (an ablation: what training adds).",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--latent-dim", type=int, default=None)
@click.option("--hidden", default="64,32", show_default=True, help="Dense layer widths.")
@click.option(
    "--filters",
    type=click.IntRange(min=1),
    default=None,
    help="Conv base filters. Default: 32 up to 64x64 images, 16 above (CPU cost).",
)
@click.option("--anogan-mode", type=click.Choice(["search", "encoder"]), default="search")
@click.option("--search-steps", type=int, default=100, show_default=True)
@click.option(
    "--score-weights",
    default=None,
    help="GANomaly component weights (default encoder_knn=1,discriminator_knn=1; the residuals "
    "and, for records, encoder_svm 0; images: discriminator_rotation=1 trains the "
    "discriminator's rotation head and lets it vote).",
)
@click.option(
    "--bank-rows",
    type=click.IntRange(min=8),
    default=4096,
    show_default=True,
    help="GANomaly memory-bank size: scoring cost per record grows with it.",
)
@click.option("--target-fpr", type=float, default=0.01, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default=None, help="Model name (default: the bundle dir name).")
@click.option("--mixed-precision", is_flag=True, help="float16 compute (GPUs only).")
@click.option(
    "--devices",
    default="1",
    show_default=True,
    callback=lambda _ctx, _param, value: _devices(value),
    help="Train data-parallel on N devices or 'all' (JAX backend: add --backend jax); "
    "the batch size must be a multiple of N.",
)
@click.option(
    "--backend",
    type=click.Choice(list(BACKENDS)),
    default=None,
    help="Keras backend for this training run (same as `anomaly --backend`).",
)
@click.option(
    "--holdout",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a seeded share of DATA's rows (every class) to this file and train on the "
    "rest: score, evaluate, threshold and check drift on it (records only).",
)
@click.option(
    "--holdout-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.3,
    show_default=True,
    help="Share of DATA's rows that --holdout keeps out of training.",
)
@click.option(
    "--from-topic",
    default=None,
    help="Instead of DATA: retrain on the records of this input topic that serve scored "
    "(needs --parent and --bootstrap-servers).",
)
@click.option(
    "--parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="--from-topic: the live bundle (its schema, preprocessing, threshold and lineage).",
)
@click.option("--bootstrap-servers", default=None, help="Kafka for --from-topic/--feedback-topic.")
@click.option("--since", default=None, help="--from-topic: only records of the last 24h / 7d.")
@click.option(
    "--last", type=click.IntRange(min=1), default=None, help="--from-topic: last N per partition."
)
@click.option(
    "--feedback-topic",
    default=None,
    help="--from-topic: analysts' verdicts from this topic (alert_id or record_id, label).",
)
@click.option(
    "--keep-alerts",
    is_flag=True,
    help="--from-topic: also train on records above the live threshold that no verdict "
    "confirmed (left out by default).",
)
@click.option(
    "--extra-fields",
    default=None,
    help="--from-topic: non-feature record fields to tolerate (serve's --extra-fields).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data: Path | None, out: Path, backend: str | None, **opts: Any) -> None:
    """Train a detector on normal data (DATA, or --from-topic) and write a model bundle."""
    if backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
            raise AnomalyError("--backend must be chosen before Keras is loaded")
        _check_backend(backend)
        os.environ["KERAS_BACKEND"] = backend
    from anomaly.bundle.bundle import require_new_bundle_dir

    require_new_bundle_dir(out)  # before minutes of training, not after

    params: dict[str, Any] = {
        "batch_size": opts["batch_size"],
        "latent_dim": opts["latent_dim"],
        "hidden": tuple(int(h) for h in _csv_list(opts["hidden"])),
        "filters": opts["filters"],
        "mixed_precision": opts["mixed_precision"],
        # Keras' live bar (ANSI codes) only on a terminal; one line per epoch elsewhere
        "verbose": 0 if opts["quiet"] else (1 if sys.stdout.isatty() else 2),
    }
    if opts["epochs"] is not None:
        params["epochs"] = opts["epochs"]
    if opts["detector"] == "anogan":
        params.update(mode=opts["anogan_mode"], search_steps=opts["search_steps"])
    else:
        params["bank_rows"] = opts["bank_rows"]
        if opts["score_weights"]:
            params["score_weights"] = _weights(opts["score_weights"])
    if opts["from_topic"]:
        X, labels, schema, extra = _topic_inputs(data, opts)
        source = f"topic {opts['from_topic']}"
    elif data is None:
        raise AnomalyError("give DATA, or --from-topic TOPIC with --parent BUNDLE")
    else:
        X, labels, schema, extra = _file_inputs(data, opts)
        source = str(data)
    from anomaly.bundle.training import train_bundle

    bundle = train_bundle(
        X,
        out,
        schema,
        labels=labels,
        learn_from_labels=opts["learn_from_labels"],
        detector=opts["detector"],
        detector_params=params,
        target_fpr=opts["target_fpr"],
        seed=opts["seed"],
        name=opts["name"],
        source=source,
        devices=opts["devices"],
        **extra,
    )
    click.echo(
        f"wrote bundle {bundle.path} ({bundle.detector_name}, version {bundle.model_version}); "
        f"threshold {bundle.threshold:.6g} at target FPR {opts['target_fpr']}"
    )
    _report_labels(bundle.manifest["training"].get("labels", {}), opts["learn_from_labels"])
    n_calibration = int(bundle.manifest["training"]["n_calibration"])
    expected_above = n_calibration * opts["target_fpr"]
    if expected_above < MIN_CALIBRATION_EXCEEDANCES:
        _warn(
            f"the threshold rests on {expected_above:.2g} of {n_calibration} calibration "
            f"rows above it (target FPR {opts['target_fpr']:g}): expect a different alert "
            "rate on new normal data; train on more normal data, raise --target-fpr, or refit "
            "it with `anomaly threshold` on more normal data"
        )


TOPIC_ONLY = ("parent", "since", "last", "feedback_topic", "keep_alerts", "extra_fields")
FILE_ONLY = ("images", "holdout", "features", "exclude")


def _topic_inputs(data: Path | None, opts: dict[str, Any]) -> tuple[Any, Any, Any, dict]:
    """Rows, labels, schema and train_bundle extras for a retrain from the input topic."""
    from anomaly.bundle.describe import describe_lineage
    from anomaly.bundle.schema import Schema
    from anomaly.monitoring.refit import read_feedback
    from anomaly.monitoring.retrain import read_retrain_window
    from anomaly.monitoring.scores import parse_duration

    if data is not None:
        raise AnomalyError("give DATA or --from-topic, not both")
    if not opts["parent"] or not opts["bootstrap_servers"]:
        raise AnomalyError(
            "--from-topic needs --parent (the live bundle: its schema, preprocessing and "
            "threshold) and --bootstrap-servers"
        )
    given = [f"--{k.replace('_', '-')}" for k in FILE_ONLY if opts[k]]
    if given:
        raise AnomalyError(
            f"{', '.join(given)}: not with --from-topic (the live bundle fixes the features)"
        )
    parent = _load_bundle(opts["parent"])
    if parent.schema.kind != "tabular":
        raise AnomalyError(f"--parent {opts['parent']}: --from-topic retrains record bundles")
    _quiet_kafka()
    bootstrap = opts["bootstrap_servers"]
    feedback = read_feedback(opts["labels_file"], opts["feedback_topic"], bootstrap)
    window = read_retrain_window(
        bootstrap,
        opts["from_topic"],
        parent,
        last=opts["last"],
        since_s=parse_duration(opts["since"]) if opts["since"] else None,
        feedback=feedback,
        keep_alerts=opts["keep_alerts"],
        extra_fields=tuple(_csv_list(opts["extra_fields"]) or ()),
    )
    click.echo(describe_lineage(window.lineage))
    prep = parent.manifest["preprocessing"]
    sources = [f"verdicts {s}" for s in (opts["labels_file"], opts["feedback_topic"]) if s]
    extra = {
        "log1p_columns": _csv_list(opts["log1p"]) or prep.get("log1p_columns", []),
        "scaler": prep.get("scaler", opts["scaler"]),
        "labels_source": " + ".join(sources) or None,
        "lineage": window.lineage,
    }
    return window.X, window.labels, Schema.tabular(parent.schema.feature_names), extra


def _file_inputs(data: Path, opts: dict[str, Any]) -> tuple[Any, Any, Any, dict]:
    """Rows (or images), labels, schema and train_bundle extras for DATA."""
    from anomaly.bundle.schema import Schema

    given = [f"--{k.replace('_', '-')}" for k in TOPIC_ONLY if opts[k]]
    if given:
        raise AnomalyError(f"{', '.join(given)}: only with --from-topic")
    labels = None
    extra: dict[str, Any] = {}
    images = opts["images"] or _is_image_source(data)
    if images and opts["holdout"]:
        raise AnomalyError("--holdout splits record files; for images, keep a folder aside")
    if images and opts["labels_file"]:
        raise AnomalyError("--labels joins verdicts to records; it does not apply to images")
    if images:
        from anomaly.imaging.readers import load_training_images

        channels = int(opts["channels"]) if opts["channels"] else None
        X, image_options = load_training_images(
            data, opts["image_size"], channels, intensity=opts["intensity"]
        )
        schema = Schema.image(*X.shape[1:])
        extra["image_preprocessing"] = image_options
    else:
        from anomaly.tabular.readers import hold_out, read_table

        label = None if opts["label_column"].lower() == "none" else opts["label_column"]
        table = read_table(
            data, _csv_list(opts["features"]), _csv_list(opts["exclude"]), label, opts["id_column"]
        )
        X, labels = table.X, table.labels
        _check_record_options(data, table.feature_names, opts)
        extra["labels_source"] = f"column {table.label_column}" if labels is not None else None
        if opts["labels_file"]:
            labels = _verdict_labels(table, labels, opts["labels_file"])
            extra["labels_source"] = " + ".join(
                s for s in (extra["labels_source"], f"verdicts {opts['labels_file']}") if s
            )
        if opts["holdout"]:
            keep = hold_out(data, opts["holdout_fraction"], opts["seed"], opts["holdout"])
            X, labels = X[keep], None if labels is None else labels[keep]
            click.echo(
                f"held out {int((~keep).sum())} of {len(keep)} rows to {opts['holdout']} "
                "(score, evaluate, threshold and check drift on it); training on the rest"
            )
        schema = Schema.tabular(table.feature_names)
        extra.update(log1p_columns=_csv_list(opts["log1p"]), scaler=opts["scaler"])
    return X, labels, schema, extra


def _verdict_labels(table: Any, labels: np.ndarray | None, path: Path) -> np.ndarray:
    """DATA's labels with the verdicts of ``path`` applied, matched by record id."""
    import numpy as np

    from anomaly.monitoring.scores import read_feedback_file

    if table.id_column is None:
        raise InputError(
            str(table.path),
            "--labels matches verdicts to rows by record id, and no id column was found "
            "(name it with --id-column)",
        )
    feedback = read_feedback_file(path)
    out = np.zeros(len(table.ids), np.int8) if labels is None else labels.astype(np.int8)
    rows: dict[str, list[int]] = {}
    for i, record_id in enumerate(table.ids):
        rows.setdefault(record_id, []).append(i)
    matched = [rid for rid in feedback.by_record if rid in rows]
    for record_id in matched:
        out[rows[record_id]] = feedback.by_record[record_id]
    if feedback.by_alert:
        _warn(
            f"{len(feedback.by_alert)} verdict(s) in {path} name only an alert_id; training "
            "matches rows by record_id, so they were not used"
        )
    unmatched = len(feedback.by_record) - len(matched)
    if unmatched:
        _warn(
            f"{unmatched} of {len(feedback.by_record)} verdict(s) in {path} name no row of "
            f"{table.path} (by its column {table.id_column!r})"
        )
    if not matched:
        raise InputError(
            str(path), f"no verdict names a row of {table.path} (by its column {table.id_column!r})"
        )
    return out


def _report_labels(labels: dict[str, Any], learn: bool) -> None:
    """One line on what the labelled anomalies did, when there were any."""
    n = int(labels.get("anomalies") or 0)
    if not n:
        return
    if labels.get("learned"):
        click.echo(
            f"learned from {n} labelled anomalies ({labels.get('source')}): the label head "
            "votes beside the memory banks"
        )
    else:
        why = "--no-learn-from-labels" if not learn else "this detector does not learn from them"
        click.echo(f"left {n} labelled anomalies out of training ({why})")


def _warn(message: str) -> None:
    """A result weaker than it looks, and what to do about it: one line on stderr."""
    click.echo(f"warning: {message}", err=True)


def _check_record_options(data: Path, features: list[str], opts: dict[str, Any]) -> None:
    """Options that name columns must name features, before any training starts."""
    from anomaly.tabular.readers import LABEL_CANDIDATES

    missing = [c for c in _csv_list(opts["log1p"]) if c not in features]
    if missing:
        raise InputError(
            str(data),
            f"--log1p column(s) {', '.join(missing)} not among the features "
            f"({', '.join(features[:40])})",
        )
    if opts["label_column"].lower() == "none":
        used = [c for c in features if c in LABEL_CANDIDATES]
        if used and not opts["features"]:
            _warn(
                f"--label-column none: {', '.join(used)} is trained on as a feature and every "
                f"scored record must carry it; add --exclude {','.join(used)} if it is a label"
            )


def _quiet_kafka() -> None:
    """kafka-python logs every connection at INFO: noise around a one-off topic read."""
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def _load_bundle(path: Path, model: bool = True) -> Any:
    """A verified bundle; ``model=False`` skips the networks (and the seconds Keras takes).

    On a terminal, a load still running after ``SLOW_LOAD_NOTICE_S`` says why the command
    is slow (Keras and TensorFlow start up); piped or redirected output gets no such line.
    """
    from anomaly.bundle.bundle import Bundle

    if not model or not sys.stderr.isatty():
        return Bundle.load(path, model=model)
    says = "loading the model's networks (Keras starts up: a few seconds)"
    notice = threading.Timer(SLOW_LOAD_NOTICE_S, lambda: click.echo(says, err=True))
    notice.daemon = True
    notice.start()
    try:
        return Bundle.load(path, model=model)
    finally:
        notice.cancel()


def _warn_if_training_data(bundle: Any, data: Path) -> None:
    """Rows the model trained on score lower than new ones (the memory banks hold them)."""
    from anomaly.bundle.bundle import sha256_file

    trained_on = bundle.manifest.get("training", {}).get("source_sha256")
    if trained_on and data.is_file() and sha256_file(data) == trained_on:
        _warn(
            f"{data} is the file this bundle was trained on: its normal rows are in the "
            "memory banks, so alert rates, metrics and drift look better than on new data; "
            "train with --holdout FILE and use that file"
        )


def _read_for_bundle(
    bundle: Any, data: Path, label_column: str | None, id_column: str, skip_bad_rows: bool = False
) -> Any:
    from anomaly.tabular.readers import read_table

    if bundle.schema.kind != "tabular":
        raise AnomalyError(
            f"{bundle.path} is an image bundle: use `anomaly score-images` for image data"
        )
    return read_table(
        data, bundle.schema.feature_names, None, label_column, id_column, skip_bad_rows
    )


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help=".csv or .jsonl")
@click.option("--top-k", type=int, default=3, show_default=True, help="Top features per row.")
@click.option("--id-column", default="auto", show_default=True)
@click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="Score the readable rows; list the others (row, problem) in OUT's .errors.csv and "
    "exit 1, as spark-score does. Without it one bad row stops the file.",
)
def score(
    bundle_dir: Path, data: Path, out: Path, top_k: int, id_column: str, skip_bad_rows: bool
) -> None:
    """Score a CSV / JSONL / NPZ file; writes id, score, components, is_anomaly, top features."""
    from anomaly.tabular.batch import score_table, write_row_errors, write_rows

    bundle = _load_bundle(bundle_dir)
    try:
        table = _read_for_bundle(bundle, data, None, id_column, skip_bad_rows)
    except InputError as error:
        if error.row is None:
            raise
        hint = f"{error.problem} (--skip-bad-rows scores the rest)"
        raise InputError(error.file, hint, error.row) from None
    rows = score_table(bundle, table, top_k) if len(table.X) else []
    write_rows(rows, out)
    flagged = sum(r["is_anomaly"] for r in rows)
    click.echo(f"scored {len(rows)} records, {flagged} above threshold {bundle.threshold:.6g}")
    click.echo(f"wrote {out}")
    if table.skipped:
        errors_out = write_row_errors(table.skipped, out)
        click.echo(
            f"error: skipped {len(table.skipped)} unreadable rows, listed in {errors_out}",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--label-column", default="auto", show_default=True)
@click.option("--plots", type=click.Path(path_type=Path), default=None, help="Dir for PNGs.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def evaluate(
    bundle_dir: Path, data: Path, label_column: str, plots: Path | None, json_out: Path | None
) -> None:
    """Evaluate on labelled data: ROC-AUC, AP, precision/recall/F1 at the bundle threshold."""
    from anomaly.tabular.evaluation import evaluate_scores, write_plots

    bundle = _load_bundle(bundle_dir)
    _warn_if_training_data(bundle, data)
    table = _read_for_bundle(bundle, data, label_column, "auto")
    if table.labels is None:
        raise AnomalyError(f"{data}: no label column found; pass --label-column")
    scores = bundle.score_components(table.X).score
    report = evaluate_scores(scores, table.labels, bundle.threshold)
    report["threshold_version"] = bundle.threshold_version
    for key, value in report.items():
        click.echo(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    if plots:
        for path in write_plots(scores, table.labels, bundle.threshold, plots):
            click.echo(f"wrote {path}")
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2))


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option(
    "--method", type=click.Choice(["quantile", "pot", "f1", "precision"]), default="quantile"
)
@click.option("--target-fpr", type=float, default=0.01, show_default=True)
@click.option("--at-recall", type=float, default=0.9, show_default=True)
@click.option("--initial-quantile", type=float, default=0.98, show_default=True, help="POT.")
@click.option("--label-column", default="auto", show_default=True, help="'none': all normal.")
@click.option(
    "--scores",
    "scores_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Refit from published scores instead of DATA: score messages (JSON lines, as on "
    "--scores-topic) or `anomaly score` output.",
)
@click.option("--from-topic", default=None, help="Refit from this scores topic (serve's).")
@click.option("--bootstrap-servers", default=None, help="Kafka for --from-topic/--feedback-topic.")
@click.option("--since", default=None, help="Only scores from the last 24h / 30m / 7d.")
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N scores.")
@click.option(
    "--feedback",
    "feedback_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Analyst labels (JSON lines or CSV: alert_id or record_id, label).",
)
@click.option("--feedback-topic", default=None, help="Topic of analyst labels (JSON).")
@click.option(
    "--max-change",
    type=float,
    default=3.0,
    show_default=True,
    help="Refuse (without --force) a change of the alert rate by more than this factor.",
)
@click.option(
    "--min-alert-rate",
    type=float,
    default=1e-4,
    show_default=True,
    help="Refuse (without --force) a threshold that alerts on fewer scores than this.",
)
@click.option("--force", is_flag=True, help="Apply a change the guard refuses.")
@click.option("--rollback", default=None, help="Make threshold vN live again (appends a copy).")
@click.option("--history", is_flag=True, help="Print the threshold history and exit.")
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Re-sign a signed bundle after the change (EC private key, PEM).",
)
@click.option("--dry-run", is_flag=True, help="Print what the threshold implies; change nothing.")
def threshold(bundle_dir: Path, data: Path | None, **opts: Any) -> None:
    """Refit the alert threshold of a bundle without retraining; guarded, with history.

    Scores come from DATA (a CSV / JSONL / NPZ of records, or images for image bundles: a
    folder / IDX / NPZ of normal images, quantile and POT only), from --scores FILE or from
    --from-topic TOPIC (the scores serve publishes). Every refit prints the alert rate
    before -> after on that data; a change beyond --max-change or under --min-alert-rate
    needs --force. Each change appends to the bundle's history; --rollback vN appends a copy.
    """
    from anomaly.bundle.thresholds import history_table

    bundle = _load_bundle(bundle_dir, model=False)
    if opts["history"]:
        click.echo(history_table(bundle.threshold_history))
        return
    if opts["rollback"]:
        version = opts["rollback"].lstrip("vV")
        if not version.isdigit():
            raise AnomalyError(f"--rollback {opts['rollback']!r}: expected a version like v2")
        before = bundle.threshold
        if opts["dry_run"]:
            history = bundle.threshold_history
            if not 1 <= int(version) <= len(history):
                raise AnomalyError(
                    f"--rollback: no v{version}; the history has v1..v{len(history)}"
                )
            click.echo(
                f"dry run: threshold {before:.6g} -> {history[int(version) - 1]['value']:.6g} "
                f"(v{version}); bundle unchanged"
            )
            return
        entry = bundle.rollback_threshold(int(version), sign_key=opts["sign_key"])
        click.echo(
            f"threshold {before:.6g} -> {entry['value']:.6g}: version {entry['version']} "
            f"({entry['note']}) written to {bundle.manifest_path}"
        )
        return
    from anomaly.bundle.thresholds import propose_change
    from anomaly.monitoring.refit import refit_inputs

    sources = [s for s in (data, opts["scores_file"], opts["from_topic"]) if s]
    if len(sources) != 1:
        raise AnomalyError("give exactly one of DATA, --scores FILE or --from-topic TOPIC")
    if data is not None:
        _warn_if_training_data(bundle, data)
        bundle = _load_bundle(bundle_dir)  # DATA is scored: the networks are needed
    _quiet_kafka()
    inputs = refit_inputs(bundle, data, opts)
    change = propose_change(
        bundle.threshold,
        bundle.threshold_version,
        opts["method"],
        inputs.scores,
        inputs.labels,
        population=inputs.population,
        target_fpr=opts["target_fpr"],
        at_recall=opts["at_recall"],
        initial_quantile=opts["initial_quantile"],
    )
    click.echo(f"scores: {inputs.description}")
    click.echo(change.table())
    refusal = change.refusal(opts["max_change"], opts["min_alert_rate"])
    if refusal and not opts["force"]:
        # a dry run answers what the real run would do, refusal and exit code included
        dry = "dry run: the guard would refuse this change: " if opts["dry_run"] else ""
        raise AnomalyError(f"{dry or 'threshold unchanged: '}{refusal}")
    if refusal:
        click.echo(f"forced: {refusal}")
    if opts["dry_run"]:
        click.echo("dry run: bundle unchanged")
        return
    entry = bundle.append_threshold(
        {**change.fit.to_entry(inputs.fingerprint), "source": inputs.source}, opts["sign_key"]
    )
    click.echo(f"threshold version {entry['version']} written to {bundle.manifest_path}")


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest.")
def info(bundle_dir: Path, as_json: bool) -> None:
    """Print a bundle's manifest in human form."""
    from anomaly.bundle.describe import describe_manifest

    bundle = _load_bundle(bundle_dir, model=False)  # a tampered bundle is refused here too
    manifest = bundle.manifest
    click.echo(json.dumps(manifest, indent=2) if as_json else describe_manifest(manifest))
    if not as_json:
        signed = f"signed by key {bundle.signer}, verified" if bundle.signer else "not signed"
        click.echo(f"signature    {signed}")


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="EC private key (PEM), e.g. from `openssl ecparam -name prime256v1 -genkey`.",
)
def sign(bundle_dir: Path, key: Path) -> None:
    """Sign every file of a bundle, manifest included (OpenSSF model-signing, key pair).

    Writes BUNDLE/bundle.sig and the signer's public key BUNDLE/bundle.sig.pub. Once signed,
    load, score and serve verify the bundle, and threshold changes need --sign-key.
    """
    from anomaly.bundle.signing import sign_bundle

    _load_bundle(bundle_dir, model=False)  # never sign a bundle whose files do not check
    click.echo(f"signed {bundle_dir} with key {sign_bundle(bundle_dir, key)}")


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Trusted public key (PEM); default: the key shipped in the bundle (integrity only).",
)
def verify(bundle_dir: Path, public_key: Path | None) -> None:
    """Check a bundle's signature over every file; exit 2 with the reason when it fails."""
    from anomaly.bundle.bundle import Bundle

    bundle = Bundle.load(bundle_dir, public_key=public_key, require_signature=True, model=False)
    trust = f"the pinned key {public_key}" if public_key else "the key shipped in the bundle"
    click.echo(
        f"verified: {len(bundle.manifest['files']) + 1} files signed by key {bundle.signer} "
        f"(checked against {trust})"
    )


def _max_age(text: str) -> float:
    """``--max-age 1h`` in seconds (the duration syntax of ``--since``)."""
    from anomaly.monitoring.scores import parse_duration

    try:
        return parse_duration(text)
    except AnomalyError:
        raise AnomalyError(f"--max-age {text!r}: expected a number and a unit s/m/h/d/w") from None


@main.command()
@click.argument("live", type=click.Path(path_type=Path))
@click.argument("challenger", type=click.Path(path_type=Path), required=False)
@click.option(
    "--rollback", is_flag=True, help="Make the champion the last promotion replaced live again."
)
@click.option("--history", is_flag=True, help="Print the promotions and rollbacks of LIVE.")
@click.option(
    "--evidence",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Shadow report of serve --shadow-bundle [default: CHALLENGER.shadow.json].",
)
@click.option(
    "--max-change",
    type=float,
    default=3.0,
    show_default=True,
    help="Largest factor by which the challenger's alert rate may differ from the live one's.",
)
@click.option(
    "--min-overlap",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Least Jaccard overlap of the records both bundles alert on.",
)
@click.option(
    "--max-drift",
    type=float,
    default=0.25,
    show_default=True,
    help="Largest PSI of the challenger's score or any feature on the live traffic.",
)
@click.option(
    "--min-records",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Least records the comparison must cover.",
)
@click.option("--max-age", default="1h", show_default=True, help="Oldest evidence accepted.")
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pinned key (PEM) the challenger must be signed with [default: the live bundle's].",
)
@click.option("--force", is_flag=True, help="Promote although the evidence misses a bound.")
@click.option("--dry-run", is_flag=True, help="Judge only; switch nothing.")
def promote(live: Path, challenger: Path | None, **opts: Any) -> None:
    """Make CHALLENGER the live bundle at LIVE, guarded by the shadow comparison serve wrote.

    LIVE becomes a link into LIVE.releases/, re-pointed atomically; a running serve switches
    within its --threshold-refresh-s. Exit 2 with one line when refused.
    """
    from anomaly.bundle import promotion
    from anomaly.stream.config import shadow_report_for

    if opts["history"]:
        click.echo(promotion.history_table(promotion.read_history(live)))
        return
    if opts["rollback"]:
        if challenger is not None:
            raise AnomalyError("--rollback takes LIVE only (it restores the previous champion)")
        if opts["dry_run"]:
            target, _ = promotion.rollback_target(live)
            click.echo(f"dry run: {live} would point at {target}; nothing changed")
            return
        entry = promotion.rollback(live, opts["public_key"])
        click.echo(
            f"rolled back {live}: {entry['from']} -> {entry['to']} (model {entry['to_version']}); "
            "a running serve switches within its --threshold-refresh-s"
        )
        return
    if challenger is None:
        raise AnomalyError("give LIVE and CHALLENGER (or LIVE --rollback)")
    if opts["max_change"] <= 1.0:
        raise AnomalyError(f"--max-change must be above 1, got {opts['max_change']}")
    guard = promotion.Guard(
        max_change=opts["max_change"],
        min_overlap=opts["min_overlap"],
        max_drift=opts["max_drift"],
        min_records=opts["min_records"],
        max_age_s=_max_age(opts["max_age"]),
    )
    live_bundle, challenger_bundle, signer = promotion.load_pair(
        live, challenger, opts["public_key"]
    )
    evidence_path = opts["evidence"] or shadow_report_for(challenger)
    evidence = promotion.read_evidence(evidence_path)
    if evidence is not None:
        click.echo(promotion.comparison_table(evidence))
    reasons = promotion.judge(evidence, evidence_path, live_bundle, challenger_bundle, guard)
    if reasons and not opts["force"]:
        raise AnomalyError(
            f"promotion refused: {'; '.join(reasons)}; pass --force to promote anyway"
        )
    if reasons:
        click.echo(f"forced: {'; '.join(reasons)}")
    if opts["dry_run"]:
        click.echo(f"dry run: {challenger} would become live at {live}; nothing changed")
        return
    key, _ = promotion.trusted_key(live, opts["public_key"])
    entry = promotion.promote(
        live,
        challenger,
        live_bundle,
        challenger_bundle,
        key=key,
        signer=signer,
        evidence=evidence,
        overridden=reasons,
    )
    signed = f", signed by key {signer}" if signer else ""
    click.echo(
        f"promoted {challenger} (model {entry['to_version']}{signed}) over model "
        f"{entry['from_version']}: {live} -> {promotion.releases_dir(live).name}/{entry['to']}; "
        "a running serve switches within its --threshold-refresh-s"
    )


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--from-topic", default=None, help="An input topic (records) or a scores topic.")
@click.option("--bootstrap-servers", default=None, help="Kafka for --from-topic.")
@click.option("--last", type=click.IntRange(min=1), default=None, help="Last N per partition.")
@click.option(
    "--fail-above",
    type=float,
    default=None,
    help="Exit 1 when any PSI is above this (0.25 is a major shift), for scheduled checks.",
)
def drift(
    bundle_dir: Path,
    data: Path | None,
    from_topic: str | None,
    bootstrap_servers: str | None,
    last: int | None,
    fail_above: float | None,
) -> None:
    """Compare DATA or a topic with the bundle's reference: PSI per feature and of the score.

    The same comparison as serve's anomaly_*_drift_psi gauges, offline. Features are
    compared with the training rows, the score with the calibration split.
    """
    from anomaly.monitoring.drift import drift_of_file, drift_of_topic

    if (data is None) == (from_topic is None):
        raise AnomalyError("give DATA or --from-topic TOPIC (one of them)")
    bundle = _load_bundle(bundle_dir)
    if from_topic:
        if not bootstrap_servers:
            raise AnomalyError("--from-topic needs --bootstrap-servers")
        _quiet_kafka()
        report = drift_of_topic(bundle, bootstrap_servers, from_topic, last)
    else:
        _warn_if_training_data(bundle, data)
        report = drift_of_file(bundle, data)
    click.echo(report.table())
    if fail_above is not None and report.worst > fail_above:
        click.echo(f"error: PSI {report.worst:.4f} above --fail-above {fail_above}", err=True)
        sys.exit(1)


@main.command("score-images")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--window",
    nargs=2,
    type=float,
    default=None,
    help="DICOM window CENTER WIDTH (overrides the files' tags and the trained window).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score_images(
    bundle_dir: Path,
    source: Path,
    out: Path,
    batch_size: int,
    window: tuple[float, float] | None,
    quiet: bool,
) -> None:
    """Score a folder tree of PNG/JPEG/TIFF/DICOM (or an IDX/NPZ file); write an HTML report.

    Exit code 1 when any file could not be read (listed in errors.csv and the report).
    """
    from anomaly.imaging.readers import discover_files
    from anomaly.imaging.report import report_folder
    from anomaly.imaging.scoring import stability_notice

    bundle = _load_bundle(bundle_dir)
    notice = stability_notice(bundle)
    if notice:
        _warn(notice)
    paths = discover_files(source)
    if not paths:
        raise AnomalyError(f"{source}: no PNG/JPEG/TIFF/DICOM/IDX/NPZ files found")
    with click.progressbar(length=len(paths), label="scoring files", hidden=quiet) as bar:
        summary = report_folder(
            bundle, source, out, batch_size, window, lambda _: bar.update(1), paths
        )
    click.echo(
        f"scored {summary.scored} images, {summary.flagged} above threshold "
        f"{summary.threshold:.6g}; {summary.failed_files} unreadable files"
    )
    click.echo(f"wrote {summary.out_dir / 'index.html'}")
    if summary.failed_files:
        click.echo(f"error: {summary.failed_files} files failed, see errors.csv", err=True)
        sys.exit(1)


@main.command()
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("-n", "n", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True)
def generate(bundle_dir: Path, n: int, out: Path, seed: int) -> None:
    """Sample synthetic normal records (CSV, original units) or images (PNG) for augmentation."""
    from anomaly.demo.generate import generate as write_samples

    bundle = _load_bundle(bundle_dir)
    files = write_samples(bundle, n, out, seed)
    what = "images" if bundle.schema.kind == "image" else f"rows to {files[0]}"
    click.echo(f"wrote {n} synthetic normal {what} under {out}")


@main.command("spark-score")
@click.option("--bundle", "bundle_dir", required=True, help="Bundle path (shared or shipped).")
@click.argument("source")
@click.option("--out", required=True, help="Parquet output directory (or s3a://, hdfs:// URI).")
@click.option("--errors", "errors_out", default=None, help="Errors output [default: OUT-errors].")
@click.option("--images", is_flag=True, help="SOURCE is a folder of image files (binaryFile).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "parquet", "csv", "json"]),
    default="auto",
    show_default=True,
    help="Records format (auto: by suffix; a folder is Parquet).",
)
@click.option("--id-column", default="auto", show_default=True, help="'none': row numbers.")
@click.option("--top-k", type=int, default=3, show_default=True, help="Top features per row.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per batch.")
@click.option("--window", nargs=2, type=float, default=None, help="DICOM window CENTER WIDTH.")
@click.option(
    "--master",
    default=None,
    help="Spark master (default: spark-submit's, else local[*]), e.g. local[2].",
)
def spark_score(
    bundle_dir: str,
    source: str,
    out: str,
    errors_out: str | None,
    images: bool,
    fmt: str,
    id_column: str,
    top_k: int,
    batch_size: int,
    window: tuple[float, float] | None,
    master: str | None,
) -> None:
    """Score a Parquet / CSV / JSON dataset or an image folder on Spark (pip install
    'anomaly-gan[spark]'); scores and errors as Parquet. Exit code 1 when any row failed."""
    from anomaly.spark.scoring import score_dataset, score_image_files, session

    spark = session(master)
    if images:
        summary = score_image_files(
            spark, bundle_dir, source, out, errors_out, window=window, batch_size=batch_size
        )
        what = f"{summary.inputs} files: {summary.scored} images scored"
    else:
        ids = None if id_column.lower() == "none" else id_column
        summary = score_dataset(
            spark, bundle_dir, source, out, errors_out, fmt=fmt, id_column=ids, top_k=top_k
        )
        what = f"{summary.inputs} records: {summary.scored} scored"
    click.echo(
        f"{what}, {summary.errors} errors, {summary.skipped} skipped (not images); "
        f"wrote {summary.out} and {summary.errors_out}"
    )
    if summary.errors:
        click.echo(f"error: {summary.errors} rows failed, see {summary.errors_out}", err=True)
        sys.exit(1)


def _serve_options(command: Any) -> Any:
    """One --flag per ServeConfig setting (the config module owns names, defaults and docs)."""
    from anomaly.stream.config import SECRET_ONLY_SETTINGS, describe_settings

    for setting in reversed(describe_settings()):
        if setting.name in SECRET_ONLY_SETTINGS:
            continue
        flag = "--" + setting.name.replace("_", "-")
        if isinstance(setting.default, bool):  # --exactly-once / --no-exactly-once
            flag = f"{flag}/--no-{flag[2:]}"
        hint = f" [default: {setting.default}]" if setting.default not in (None, ()) else ""
        if setting.required:
            hint = " [required, or from ANOMALY_* / --config]"
        # values stay strings for click: the config module converts and checks them, so a
        # bad value is its one-line error, wherever the value came from
        command = click.option(
            flag,
            setting.name,
            default=None,
            metavar=setting.metavar or None,
            help=setting.doc + hint,
        )(command)
    return command


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML or YAML settings file (or ANOMALY_CONFIG); flags > ANOMALY_* env > file.",
)
@_serve_options
def serve(config_file: Path | None, **flags: Any) -> None:
    """Score a Kafka topic with a bundle: alerts, dead letters, Prometheus metrics."""
    from anomaly.stream.config import load_serve_config
    from anomaly.stream.startup import serve as run_service

    sys.exit(run_service(load_serve_config(flags, config_file=config_file)))


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Keep the bundle here.")
@click.option("--records", "n_stream", type=click.IntRange(min=10), default=3000, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--metrics-port", type=int, default=9108, show_default=True)
@click.option("--linger", type=float, default=0.0, help="Seconds to keep /metrics up at the end.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(
    out: Path | None, n_stream: int, epochs: int, metrics_port: int, linger: float, seed: int
) -> None:
    """Local broker + synthetic fraud + small model + serve, end to end in about a minute."""
    from anomaly.demo.run import run_demo

    run_demo(
        out,
        n_stream=n_stream,
        epochs=epochs,
        seed=seed,
        metrics_port=metrics_port,
        linger_s=linger,
        echo=click.echo,
    )


if __name__ == "__main__":
    sys.exit(main())
