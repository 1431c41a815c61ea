"""A window of published scores (the serve ``--scores-topic`` or a file) and analyst labels.

Score messages are the ones ``anomaly.stream.alerts.AlertBuilder.score_message`` writes; a
file may hold them as JSON lines, or be the output of ``anomaly score`` (CSV or JSONL with
``id`` and ``score``). Replays (at-least-once delivery) are de-duplicated by ``alert_id``,
and only scores of the bundle's own model version are used: another version's scores are on
another scale.

Feedback labels (a file or topic of JSON objects) name a scored record by ``alert_id`` or
``record_id`` and give ``label``: 1 / true / "fraud" / "anomaly" / "confirmed" for a true
anomaly, 0 / false / "normal" / "false_positive" / "benign" for a false alarm.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.errors import AnomalyError, InputError
from anomaly.topics import read_records

POSITIVE = {"1", "true", "fraud", "anomaly", "anomalous", "confirmed", "positive"}
NEGATIVE = {"0", "false", "normal", "false_positive", "benign", "negative"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` → seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise AnomalyError(f"--since {text!r}: expected a number and a unit s/m/h/d/w, e.g. 24h")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_label(value: Any) -> int | None:
    """An analyst label as 1 (anomaly) / 0 (normal); None when it is neither."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    return 1 if text in POSITIVE else 0 if text in NEGATIVE else None


@dataclass
class Feedback:
    """Analyst labels by ``alert_id`` and by ``record_id`` (the latest label wins)."""

    by_alert: dict[str, int] = field(default_factory=dict)
    by_record: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_alert) + len(self.by_record)

    def add(self, item: Any, where: str, row: int | None) -> None:
        if not isinstance(item, dict):
            raise InputError(where, "feedback must be a JSON object", row)
        label = parse_label(item.get("label"))
        if label is None:
            raise InputError(
                where, f"label {item.get('label')!r} is not 1/0, true/false, fraud/normal", row
            )
        if item.get("alert_id") is not None:
            self.by_alert[str(item["alert_id"])] = label
        elif item.get("record_id") is not None:
            self.by_record[str(item["record_id"])] = label
        else:
            raise InputError(where, "feedback names neither alert_id nor record_id", row)

    def label_for(self, message: dict[str, Any]) -> int | None:
        alert = message.get("alert_id")
        if alert is not None and str(alert) in self.by_alert:
            return self.by_alert[str(alert)]
        record = message.get("record_id")
        return None if record is None else self.by_record.get(str(record))


@dataclass
class ScoreWindow:
    """The scores a refit or drift check uses, labels where feedback named them."""

    scores: np.ndarray
    labels: np.ndarray  # 1 / 0 where labelled, -1 where not
    source: str
    skipped_other_models: int = 0
    duplicates: int = 0

    @property
    def n_labelled(self) -> int:
        return int((self.labels >= 0).sum())

    def fingerprint(self) -> str:
        from anomaly.bundle.bundle import fingerprint

        return fingerprint(np.c_[self.scores, self.labels])


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for row, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        yield row, json.loads(line)
                    except ValueError as exc:
                        raise InputError(path, f"not JSON: {exc}", row) from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None


def read_score_file(path: str | Path) -> list[dict[str, Any]]:
    """Score messages from JSON lines, or ``anomaly score`` output (CSV / JSONL)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
        items = [
            (i, {"record_id": r.get("id"), "score": r.get("score")})
            for i, r in enumerate(rows, start=2)
        ]
    else:
        items = [(row, item) for row, item in _json_lines(path)]
    messages = []
    for row, item in items:
        if not isinstance(item, dict) or "score" not in item:
            raise InputError(path, "expected an object with a 'score'", row)
        try:
            score = float(item["score"])
        except (TypeError, ValueError):
            raise InputError(path, f"score {item['score']!r} is not a number", row) from None
        if not np.isfinite(score):
            raise InputError(path, f"score {score} is not finite", row)
        if "record_id" not in item and "id" in item:
            item = {**item, "record_id": item["id"]}
        messages.append({**item, "score": score})
    if not messages:
        raise InputError(path, "no scores in the file")
    return messages


def read_feedback_file(path: str | Path, feedback: Feedback | None = None) -> Feedback:
    """Labels from JSON lines or a CSV with ``alert_id`` or ``record_id`` and ``label``."""
    path = Path(path)
    feedback = Feedback() if feedback is None else feedback
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
        for row, item in enumerate(rows, start=2):
            feedback.add({k: v for k, v in item.items() if v not in ("", None)}, str(path), row)
    else:
        for row, item in _json_lines(path):
            feedback.add(item, str(path), row)
    return feedback


def read_topic(
    bootstrap_servers: str, topic: str, last: int | None = None, **kafka: Any
) -> list[tuple[int, Any]]:
    """Every JSON message of ``topic`` (or about the ``last`` per partition), no consumer group
    (``anomaly.topics.read_records``): (Kafka timestamp ms, decoded value); undecodable values
    are skipped."""
    out: list[tuple[int, Any]] = []
    for record in read_records(bootstrap_servers, topic, last=last, **kafka):
        try:
            out.append((record.timestamp, json.loads(record.value)))
        except (TypeError, ValueError):
            continue
    return out


def read_feedback_topic(bootstrap_servers: str, topic: str, **kafka: Any) -> Feedback:
    """Labels from every message of a feedback topic (the latest label per id wins)."""
    feedback = Feedback()
    for _, item in read_topic(bootstrap_servers, topic, **kafka):
        if isinstance(item, dict) and parse_label(item.get("label")) is not None:
            feedback.add(item, f"topic {topic}", None)
    return feedback


def build_window(
    messages: Iterable[dict[str, Any]],
    source: str,
    *,
    model_version: str | None = None,
    feedback: Feedback | None = None,
    since_s: float | None = None,
    last: int | None = None,
    now_ms: int | None = None,
) -> ScoreWindow:
    """De-duplicate, keep the bundle's model version and the time window, attach labels."""
    kept: dict[Any, dict[str, Any]] = {}
    other = duplicates = 0
    for i, message in enumerate(messages):
        model = message.get("model")
        if model_version is not None and isinstance(model, dict):
            if str(model.get("version")) != str(model_version):
                other += 1
                continue
        key = message.get("alert_id") or ("row", i)
        if key in kept:
            duplicates += 1
        kept[key] = message
    chosen = list(kept.values())
    if since_s is not None:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - since_s * 1000
        chosen = [m for m in chosen if (m.get("scored_timestamp_ms") or 0) >= cutoff]
    if last is not None:
        chosen.sort(key=lambda m: m.get("scored_timestamp_ms") or 0)
        chosen = chosen[-last:]
    if not chosen:
        raise AnomalyError(
            f"{source}: no scores of model version {model_version} in the window "
            f"({other} of other versions skipped)"
        )
    feedback = Feedback() if feedback is None else feedback
    labels = [feedback.label_for(m) for m in chosen]
    return ScoreWindow(
        np.array([float(m["score"]) for m in chosen], dtype=np.float64),
        np.array([-1 if v is None else v for v in labels], dtype=np.int8),
        source,
        other,
        duplicates,
    )
