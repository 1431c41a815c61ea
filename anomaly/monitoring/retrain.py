"""What a retrain fits on: the records the service saw, read back from its input topic.

``anomaly train --from-topic INPUT --parent LIVE_BUNDLE`` reads the window (``--last`` N per
partition, ``--since`` a duration), decodes every record against the live bundle's schema
exactly as ``serve`` does, and scores it with the live bundle. Analysts' verdicts (by
``alert_id`` — serve's topic/partition/offset — or ``record_id``) decide first: a confirmed
anomaly becomes a labelled anomaly (GANomaly's label head learns from it), a confirmed
normal is trained on as normal whatever its score. Of the rest, records above the live
threshold are left out (unconfirmed alerts are not taken for normal) unless
``keep_alerts``. Records that do not decode are counted by reason, never trained on.
The counts and the window go into the new bundle's manifest as its lineage.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomaly.errors import AnomalyError, RecordError
from anomaly.monitoring.scores import Feedback


@dataclass
class RetrainWindow:
    """Rows to train on (original units), their labels (1 = confirmed anomaly), and lineage."""

    X: np.ndarray
    labels: np.ndarray
    lineage: dict[str, Any]


def read_retrain_window(
    bootstrap_servers: str,
    topic: str,
    parent: Any,
    *,
    last: int | None = None,
    since_s: float | None = None,
    feedback: Feedback | None = None,
    keep_alerts: bool = False,
    extra_fields: tuple[str, ...] = (),
    now_ms: int | None = None,
) -> RetrainWindow:
    """Read, decode, score and select the records of ``topic`` a retrain learns from."""
    from anomaly.stream.alerts import Source, alert_id
    from anomaly.stream.records import RecordDecoder
    from anomaly.topics import read_records

    records = read_records(bootstrap_servers, topic, last=last)
    if last is not None:
        # the broker's end offsets can be short (a batch), so "about the last N": trim exactly
        tail: dict[int, list[Any]] = {}
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            tail.setdefault(record.partition, []).append(record)
        records = [r for part in tail.values() for r in part[-last:]]
    if since_s is not None:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        records = [r for r in records if r.timestamp >= now_ms - since_s * 1000]
    if not records:
        raise AnomalyError(f"topic {topic!r}: no records in the window")
    decoder = RecordDecoder(parent.schema.feature_names, extra_fields=extra_fields)
    rows, keys, refused = [], [], Counter()
    offsets: dict[int, list[int]] = {}
    for record in records:
        span = offsets.setdefault(record.partition, [record.offset, record.offset])
        span[0], span[1] = min(span[0], record.offset), max(span[1], record.offset)
        try:
            decoded = decoder.decode(record.value)
        except RecordError as error:
            refused[error.reason] += 1
            continue
        rows.append(decoded.row)
        source = Source(record.topic, record.partition, record.offset, record.timestamp, record.key)
        keys.append((alert_id(source), decoded.record_id))
    if not rows:
        raise AnomalyError(
            f"topic {topic!r}: no record in the window decodes against the live bundle's "
            f"schema ({sum(refused.values())} refused: {_reasons(refused)})"
        )
    X = np.asarray(rows, dtype=np.float64)
    scores = parent.score_components(X).score
    above = np.asarray(parent.decide(scores), dtype=bool)
    feedback = Feedback() if feedback is None else feedback
    verdicts = np.array(
        [_verdict(feedback.label_for({"alert_id": a, "record_id": r})) for a, r in keys],
        dtype=np.int8,
    )
    keep = (verdicts >= 0) | ~above | keep_alerts  # a verdict decides; else the threshold
    times = [r.timestamp for r in records]
    lineage = {
        "parent": {
            "name": parent.model_name,
            "version": parent.model_version,
            "threshold": parent.threshold,
            "threshold_version": parent.threshold_version,
        },
        "topic": topic,
        "offsets": {str(p): span for p, span in sorted(offsets.items())},
        "time_range_ms": [min(times), max(times)],
        "records_read": len(records),
        "undecodable": dict(refused),
        "above_threshold": int(above.sum()),
        "above_threshold_left_out": 0 if keep_alerts else int((above & (verdicts < 0)).sum()),
        "verdicts": {
            "anomalies": int((verdicts == 1).sum()),
            "normals": int((verdicts == 0).sum()),
            "given": len(feedback),
        },
    }
    return RetrainWindow(X[keep], (verdicts[keep] == 1).astype(np.int8), lineage)


def _verdict(label: int | None) -> int:
    return -1 if label is None else int(label)


def _reasons(refused: Counter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in refused.most_common()) or "none"
