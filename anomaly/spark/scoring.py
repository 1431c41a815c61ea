"""Score datasets and image folders on Spark with a model bundle.

The driver reads only the bundle's ``manifest.json`` (to declare the output schema), so it
needs no Keras. Each executor Python worker loads the bundle once, from a module-level cache
keyed by the bundle path and the sha256 of its manifest, and reuses it for every Arrow batch
of every task it runs; ``Bundle.load`` verifies every file's checksum as usual.

Records go through ``anomaly.tabular.batch.score_table`` and images through the readers and
the one scoring loop of ``anomaly.imaging.scoring``, so a row scores here exactly as it does
in ``anomaly score`` / ``anomaly score-images``. A row or file that cannot be scored (a
missing or non-numeric value, an unreadable image) goes to the errors output with its reason
instead of failing the job: every input row is either scored, an error, or (images only)
skipped as not an image file, as ``score-images`` skips a stray README.

The bundle must be readable at the same path on the driver and the executors (a shared
file system), or shipped with the job (``spark-submit --archives fraud.zip#fraud``): a
worker that does not find the path looks for a directory of the same name among the job's
files (``SparkFiles``) and its working directory, and refuses one whose manifest differs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.bundle import MANIFEST, sha256_file
from anomaly.bundle.schema import Schema
from anomaly.errors import AnomalyError, BundleError

# Columns ``anomaly score`` and ``anomaly score-images`` write, in their order.
UID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
ID_CANDIDATES = ("id", "ID", "record_id")
STATUS_SCORED, STATUS_ERROR, STATUS_SKIPPED = "scored", "error", "skipped"

_BUNDLES: dict[tuple[str, str], Any] = {}


@dataclass
class SparkSummary:
    """What one Spark scoring job did.

    ``inputs`` is counted on the input itself (records, or files for images); ``scored``,
    ``errors`` and ``skipped`` on the output. Every record is scored or an error, so for
    records ``inputs == scored + errors``; for single-frame image files
    ``inputs == scored + errors + skipped`` (a multi-frame file gives a row per frame).
    """

    inputs: int
    scored: int
    errors: int
    skipped: int
    out: str
    errors_out: str


def session(master: str | None = None, app_name: str = "anomaly-score") -> Any:
    """A SparkSession: under spark-submit (or with one already active) the configured one,
    else one on ``master`` (default local[*]).

    Local sessions run their Python workers with this interpreter, so the workers import the
    same installed ``anomaly`` package and Keras backend as the driver; under spark-submit
    the job's own settings (``spark.pyspark.python``, ``--archives``) are left alone.
    """
    if importlib.util.find_spec("pyspark") is None:
        raise AnomalyError("Spark scoring needs pyspark: pip install 'anomaly-gan[spark]'")
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if master is None and (active is not None or "PYSPARK_GATEWAY_PORT" in os.environ):
        return active or SparkSession.builder.appName(app_name).getOrCreate()
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise AnomalyError("Spark needs a Java runtime (17 or later): none on PATH or JAVA_HOME")
    master = master or "local[*]"
    builder = SparkSession.builder.appName(app_name).master(master)
    if master.startswith("local"):
        builder = builder.config("spark.pyspark.python", sys.executable)
        builder = builder.config("spark.pyspark.driver.python", sys.executable)
        builder = builder.config("spark.ui.enabled", "false")
    return builder.getOrCreate()


def read_manifest(bundle_path: str | Path) -> tuple[dict[str, Any], str]:
    """The bundle's manifest and its fingerprint (sha256 of the file), read on the driver."""
    path = Path(bundle_path) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_path}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest: {exc}") from exc
    return manifest, sha256_file(path)


def cached_bundle(bundle_path: str, fingerprint: str) -> Any:
    """The bundle, loaded once per Python process for each (path, manifest fingerprint)."""
    key = (bundle_path, fingerprint)
    if key not in _BUNDLES:
        from anomaly.bundle.bundle import Bundle

        local = _locate(bundle_path)
        found = sha256_file(local / MANIFEST)
        if found != fingerprint:
            raise BundleError(
                f"{local}: the executor's bundle differs from the driver's "
                f"(manifest sha256 {found[:12]} != {fingerprint[:12]})"
            )
        _BUNDLES[key] = Bundle.load(local)
    return _BUNDLES[key]


def _locate(bundle_path: str) -> Path:
    """The bundle on this worker: the driver's path, else a shipped copy of the same name."""
    path = Path(bundle_path)
    if (path / MANIFEST).is_file():
        return path
    candidates = [Path.cwd() / path.name]
    try:
        from pyspark import SparkFiles

        candidates.insert(0, Path(SparkFiles.getRootDirectory()) / path.name)
    except Exception:  # no SparkContext in this process: only the working directory
        pass
    for candidate in candidates:
        if (candidate / MANIFEST).is_file():
            return candidate
    raise BundleError(
        f"{bundle_path}: bundle not found on this executor; put it on a shared path or ship "
        f"it with spark-submit --archives {path.name}.zip#{path.name}"
    )


def _components(manifest: dict[str, Any]) -> list[str]:
    return list(manifest.get("score", {}).get("components", ["reconstruction", "discriminator"]))


def _ddl(columns: list[tuple[str, str]]) -> str:
    return ", ".join(f"`{name}` {kind}" for name, kind in columns)


def _source(source: str | Path) -> str:
    """The input URI; a local path must exist (Spark would fail with a JVM stack trace)."""
    source = str(source)
    if "://" not in source and not source.startswith("file:") and not Path(source).exists():
        raise AnomalyError(f"{source}: no such file or folder")
    return source


def _outputs(out: str | Path, errors_out: str | Path | None) -> tuple[str, str]:
    """Output URIs (local paths or s3a://, hdfs://, ...); local ones must not exist yet."""
    out = str(out).rstrip("/")
    errors = str(errors_out).rstrip("/") if errors_out else out + "-errors"
    for path in (out, errors):
        if "://" not in path and Path(path).exists():
            raise AnomalyError(f"{path}: already exists; choose a new output path")
    return out, errors


# ---------------------------------------------------------------------------------------------
# Records


def _record_columns(components: list[str]) -> list[tuple[str, str]]:
    return [
        ("id", "string"),
        ("score", "double"),
        *((name, "double") for name in components),
        ("is_anomaly", "boolean"),
        ("top_features", "array<struct<feature:string,contribution:double>>"),
    ]


def _not_finite(value: object) -> bool:
    try:
        return not np.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def parse_features(pdf: Any, features: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """Feature matrix of a pandas batch and, per row, why it cannot be scored (None: it can).

    The reasons are those of ``anomaly.tabular.readers`` for the same value: missing or
    empty, not a number, NaN/inf. The first failing column (in schema order) is named.
    """
    import pandas as pd

    n = len(pdf)
    X = np.zeros((n, len(features)), dtype=np.float64)
    reasons: list[str | None] = [None] * n
    for j, name in enumerate(features):
        raw = pdf[name]
        values = pd.to_numeric(raw, errors="coerce").astype("float64").to_numpy()
        missing = raw.isna().to_numpy()
        if raw.dtype == object:
            missing |= raw.astype(str).str.strip().eq("").to_numpy() & ~missing
        bad = ~np.isfinite(values)
        X[:, j] = np.where(bad, 0.0, values)
        for i in np.flatnonzero(bad):
            if reasons[i] is not None:
                continue
            value = raw.iloc[i]
            if missing[i]:
                reasons[i] = f"column {name!r} is missing or empty"
            elif _not_finite(value):
                reasons[i] = f"column {name!r} is {value!s} (NaN/inf not allowed)"
            else:
                reasons[i] = f"column {name!r} is not a number: {str(value)[:40]!r}"
    return X, reasons


def _score_record_batches(
    batches: Iterator[Any],
    *,
    bundle_path: str,
    fingerprint: str,
    components: list[str],
    id_column: str | None,
    offsets: dict[int, int] | None,
    top_k: int,
) -> Iterator[Any]:
    """mapInPandas body: one output row per input row, scored or with its error."""
    import pandas as pd

    from anomaly.tabular.batch import score_table
    from anomaly.tabular.readers import Table

    bundle = cached_bundle(bundle_path, fingerprint)
    features = bundle.schema.feature_names
    start = 0
    if offsets is not None:
        from pyspark import TaskContext

        start = offsets.get(TaskContext.get().partitionId(), 0)
    for pdf in batches:
        n = len(pdf)
        if id_column is not None:
            ids = ["" if pd.isna(v) else str(v) for v in pdf[id_column]]
        else:
            ids = [str(start + i + 1) for i in range(n)]
        start += n
        X, reasons = parse_features(pdf, features)
        good = np.array([r is None for r in reasons], dtype=bool)
        rows: list[dict[str, Any]] = []
        if good.any():
            table = Table(Path(bundle_path), features, X[good], list(np.array(ids)[good]), None)
            rows = score_table(bundle, table, top_k)
        out: dict[str, list[Any]] = {
            "id": ids,
            "score": [None] * n,
            **{name: [None] * n for name in components},
            "is_anomaly": [None] * n,
            "top_features": [None] * n,
            "status": [STATUS_SCORED] * n,
            "reason": reasons,
        }
        for i, row in zip(np.flatnonzero(good), rows, strict=True):
            out["score"][i] = row["score"]
            for name in components:
                out[name][i] = row[name]
            out["is_anomaly"][i] = row["is_anomaly"]
            out["top_features"][i] = [
                {"feature": f, "contribution": c} for f, c in row["top_features"]
            ]
        for i in np.flatnonzero(~good):
            out["status"][i] = STATUS_ERROR
        yield pd.DataFrame(out)


def score_dataframe(
    df: Any,
    bundle_path: str | Path,
    id_column: str | None = "auto",
    top_k: int = 3,
) -> Any:
    """Score a Spark DataFrame of records; returns one row per input row.

    Columns: ``id``, ``score``, every component, ``is_anomaly``, ``top_features`` (as
    ``anomaly score`` writes them to JSONL), then ``status`` (``scored`` / ``error``) and
    ``reason`` (why the row could not be scored, on error rows). ``id`` is the
    ``id_column`` value (``"auto"``: a column named id / ID / record_id, when there is one),
    else the row's 1-based position in scan order (for one CSV file: its row number, as
    ``anomaly score`` numbers it; this costs one extra counting pass over the data).
    """
    from pyspark.sql import functions as F

    bundle_path = str(bundle_path)
    manifest, fingerprint = read_manifest(bundle_path)
    schema = manifest.get("schema", {})
    if schema.get("kind") != "tabular":
        raise AnomalyError(f"{bundle_path} is an image bundle: score image folders with --images")
    features = Schema.from_dict(schema).feature_names
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise AnomalyError(
            f"missing column(s) {', '.join(missing)}; the data has {', '.join(df.columns[:40])}"
        )
    if id_column == "auto":
        id_column = next((c for c in ID_CANDIDATES if c in df.columns), None)
    elif id_column is not None and id_column not in df.columns:
        raise AnomalyError(f"id column {id_column!r} not found")
    df = df.select(*([id_column] if id_column else []), *features)
    offsets = None
    if id_column is None:
        counts = dict(df.groupBy(F.spark_partition_id()).count().collect())
        offsets, total = {}, 0
        for pid in sorted(counts):
            offsets[pid], total = total, total + counts[pid]
    body = functools.partial(
        _score_record_batches,
        bundle_path=bundle_path,
        fingerprint=fingerprint,
        components=_components(manifest),
        id_column=id_column,
        offsets=offsets,
        top_k=top_k,
    )
    columns = _record_columns(_components(manifest)) + [("status", "string"), ("reason", "string")]
    return df.mapInPandas(body, _ddl(columns))


def read_dataset(spark: Any, source: str | Path, fmt: str = "auto") -> Any:
    """A Parquet, CSV (header row; every column read as text, so a bad value becomes an
    error row, not a failed job) or JSON-lines dataset as a DataFrame."""
    source = str(source)
    if fmt == "auto":
        lower = source.lower().rstrip("/")
        fmt = (
            "csv"
            if lower.endswith((".csv", ".txt"))
            else "json"
            if lower.endswith((".jsonl", ".ndjson", ".json"))
            else "parquet"
        )
    if fmt == "csv":
        return spark.read.option("header", True).option("mode", "PERMISSIVE").csv(source)
    if fmt == "json":
        return spark.read.option("mode", "PERMISSIVE").json(source)
    if fmt == "parquet":
        return spark.read.parquet(source)
    raise AnomalyError(f"unknown format {fmt!r}; choose csv, json or parquet")


def score_dataset(
    spark: Any,
    bundle_path: str | Path,
    source: str | Path,
    out: str | Path,
    errors_out: str | Path | None = None,
    *,
    fmt: str = "auto",
    id_column: str | None = "auto",
    top_k: int = 3,
) -> SparkSummary:
    """Score a dataset; scores to Parquet ``out``, unscorable rows (id, reason) to
    ``errors_out`` (default ``<out>-errors``)."""
    out, errors_out = _outputs(out, errors_out)
    data = read_dataset(spark, _source(source), fmt)
    scored = score_dataframe(data, bundle_path, id_column, top_k)
    score_columns = [
        name for name, _ in _record_columns(_components(read_manifest(bundle_path)[0]))
    ]
    return _write(scored, data.count(), score_columns, ["id", "reason"], out, errors_out)


def _write(
    frame: Any,
    inputs: int,
    score_columns: list[str],
    error_columns: list[str],
    out: str,
    errors_out: str,
) -> SparkSummary:
    """Write scored and error rows from one scoring pass (the frame is persisted)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        frame.filter(F.col("status") == STATUS_SCORED).select(*score_columns).write.parquet(out)
        frame.filter(F.col("status") == STATUS_ERROR).select(*error_columns).write.parquet(
            errors_out
        )
        counts = dict(frame.groupBy("status").count().collect())
    finally:
        frame.unpersist()
    scored, errors = counts.get(STATUS_SCORED, 0), counts.get(STATUS_ERROR, 0)
    skipped = counts.get(STATUS_SKIPPED, 0)
    return SparkSummary(inputs, scored, errors, skipped, out, errors_out)


# ---------------------------------------------------------------------------------------------
# Images


def _image_columns(components: list[str]) -> list[tuple[str, str]]:
    return [
        ("path", "string"),
        ("frame", "int"),
        *((uid, "string") for uid in UID_COLUMNS),
        ("score", "double"),
        *((name, "double") for name in components),
        ("is_anomaly", "boolean"),
    ]


def _score_image_batches(
    batches: Iterator[Any],
    *,
    bundle_path: str,
    fingerprint: str,
    components: list[str],
    window: tuple[float, float] | None,
    batch_size: int,
) -> Iterator[Any]:
    """mapInPandas body over ``binaryFile`` rows: one row per frame scored, per frame or file
    that failed (reason, message), or per file that is not an image (skipped)."""
    import pandas as pd

    from anomaly.imaging.readers import Batch, discover_files, iter_images
    from anomaly.imaging.scoring import bundle_image_options, score_batches

    bundle = cached_bundle(bundle_path, fingerprint)
    options = bundle_image_options(bundle, window)
    columns = [name for name, _ in _image_columns(components)] + ["status", "reason", "message"]
    with tempfile.TemporaryDirectory(prefix="anomaly-spark-") as tmp:
        for k, pdf in enumerate(batches):
            rows: list[dict[str, Any]] = []
            metas, images = [], []
            for i, (uri, content) in enumerate(zip(pdf["path"], pdf["content"], strict=True)):
                folder = Path(tmp) / f"{k}-{i}"
                folder.mkdir()
                local = folder / uri.rstrip("/").rsplit("/", 1)[-1]
                local.write_bytes(bytes(content))
                files = discover_files(folder)
                if not files:
                    rows.append({"path": uri, "status": STATUS_SKIPPED})
                for item in iter_images(files, options):
                    if isinstance(item, tuple):
                        meta, image = item
                        meta.path = uri
                        metas.append(meta)
                        images.append(image)
                    else:
                        rows.append(
                            {
                                "path": uri,
                                "frame": item.frame,
                                "status": STATUS_ERROR,
                                "reason": item.reason,
                                "message": item.message,
                            }
                        )
                local.unlink()
                folder.rmdir()
            chunks = (
                Batch(metas[s : s + batch_size], np.stack(images[s : s + batch_size]), [])
                for s in range(0, len(images), batch_size)
            )
            for scored in score_batches(bundle, chunks):
                comps = scored.components
                for j, meta in enumerate(scored.metas):
                    row = {
                        "path": meta.path,
                        "frame": meta.frame,
                        UID_COLUMNS[0]: meta.study_uid,
                        UID_COLUMNS[1]: meta.series_uid,
                        UID_COLUMNS[2]: meta.sop_uid,
                        "score": float(comps.score[j]),
                        "is_anomaly": bool(scored.flags[j]),
                        "status": STATUS_SCORED,
                    }
                    for name in components:
                        row[name] = float(comps.component(name)[j])
                    rows.append(row)
            yield pd.DataFrame(
                {name: [row.get(name) for row in rows] for name in columns}, dtype=object
            )


def score_image_files(
    spark: Any,
    bundle_path: str | Path,
    source: str | Path,
    out: str | Path,
    errors_out: str | Path | None = None,
    *,
    window: tuple[float, float] | None = None,
    batch_size: int = 256,
) -> SparkSummary:
    """Score every file under ``source`` (Spark's ``binaryFile`` source, recursive) with an
    image bundle; per-frame scores to Parquet ``out`` (the columns of ``score-images``'
    scores.csv), unreadable files and frames (path, frame, reason, message) to
    ``errors_out`` (default ``<out>-errors``). Files that are not images are skipped and
    counted, as ``score-images`` skips them."""
    bundle_path = str(bundle_path)
    out, errors_out = _outputs(out, errors_out)
    manifest, fingerprint = read_manifest(bundle_path)
    if manifest.get("schema", {}).get("kind") != "image":
        raise AnomalyError(f"{bundle_path} is a tabular bundle: score records without --images")
    components = _components(manifest)
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "[!.]*")
        .load(_source(source))
        .select("path", "content")
    )
    body = functools.partial(
        _score_image_batches,
        bundle_path=bundle_path,
        fingerprint=fingerprint,
        components=components,
        window=window,
        batch_size=batch_size,
    )
    columns = _image_columns(components) + [
        ("status", "string"),
        ("reason", "string"),
        ("message", "string"),
    ]
    settings = {
        # one Arrow batch holds whole files: keep it to about one scoring batch of them
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_size),
        # Spark counts each file as at least 4 MB when it packs files into tasks, which cut
        # 3000 small PNGs into ~100 tasks of 32 images; with a small cost per file the tasks
        # split the bytes evenly over the cores (at most 128 MB each) instead
        "spark.sql.files.openCostInBytes": "8192",
    }
    before = {key: spark.conf.get(key) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        scored = files.mapInPandas(body, _ddl(columns))
        return _write(
            scored,
            files.count(),
            [name for name, _ in _image_columns(components)],
            ["path", "frame", "reason", "message"],
            out,
            errors_out,
        )
    finally:
        for key, value in before.items():
            spark.conf.set(key, value)
