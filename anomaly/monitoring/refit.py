"""What a threshold refit fits on: records scored now, or scores the service published.

Label-free methods (quantile, POT) fit on the normal scores: every score, less the rows a
label column or analyst feedback marks as anomalies. Labelled methods (f1, precision) fit
on the labelled scores only; alert rates are still measured on the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.thresholds import NEEDS_LABELS
from anomaly.errors import AnomalyError
from anomaly.monitoring.scores import (
    Feedback,
    ScoreWindow,
    build_window,
    parse_duration,
    read_feedback_file,
    read_feedback_topic,
    read_score_file,
    read_topic,
)


@dataclass
class RefitInputs:
    """Scores (and labels) a fit uses, the whole window's scores, and where they came from."""

    scores: np.ndarray
    labels: np.ndarray | None
    population: np.ndarray | None
    description: str
    fingerprint: str
    source: str


def refit_inputs(bundle: Any, data: Path | None, opts: dict[str, Any]) -> RefitInputs:
    """Scores from DATA (scored with the bundle), a score file or a scores topic."""
    if data is not None:
        return _from_records(bundle, data, opts["label_column"])
    window = read_window(bundle, opts)
    return from_window(window, opts["method"])


def read_window(bundle: Any, opts: dict[str, Any]) -> ScoreWindow:
    """The ``--scores`` file or ``--from-topic`` window, with ``--feedback`` labels."""
    since = parse_duration(opts["since"]) if opts.get("since") else None
    bootstrap = opts.get("bootstrap_servers")
    if (opts.get("from_topic") or opts.get("feedback_topic")) and not bootstrap:
        raise AnomalyError("--from-topic and --feedback-topic need --bootstrap-servers")
    feedback = read_feedback(opts.get("feedback_file"), opts.get("feedback_topic"), bootstrap)
    if opts.get("from_topic"):
        topic = opts["from_topic"]
        messages = [m for _, m in read_topic(bootstrap, topic, last=opts.get("last"))]
        messages = [m for m in messages if isinstance(m, dict) and "score" in m]
        source = f"topic {topic}"
    else:
        messages = read_score_file(opts["scores_file"])
        source = f"file {opts['scores_file']}"
    return build_window(
        messages,
        source,
        model_version=bundle.model_version,
        feedback=feedback,
        since_s=since,
        last=opts.get("last"),
    )


def read_feedback(path: Path | None, topic: str | None, bootstrap: str | None) -> Feedback:
    """Analysts' verdicts from a file and / or a topic (the topic's win on the same id)."""
    feedback = Feedback()
    if path:
        read_feedback_file(path, feedback)
    if topic:
        topic_labels = read_feedback_topic(bootstrap, topic)
        feedback.by_alert.update(topic_labels.by_alert)
        feedback.by_record.update(topic_labels.by_record)
    return feedback


def from_window(window: ScoreWindow, method: str) -> RefitInputs:
    """Fit inputs from a score window: labelled rows for f1/precision, normals otherwise."""
    labelled = window.labels >= 0
    description = f"{window.scores.size} from {window.source}"
    extras = []
    if window.n_labelled:
        extras.append(f"{window.n_labelled} with analyst labels")
    if window.duplicates:
        extras.append(f"{window.duplicates} replays de-duplicated")
    if window.skipped_other_models:
        extras.append(f"{window.skipped_other_models} of other model versions skipped")
    if extras:
        description += " (" + ", ".join(extras) + ")"
    if method in NEEDS_LABELS:
        if not labelled.any():
            raise AnomalyError(
                f"--method {method} needs analyst labels for some of these scores "
                "(--feedback FILE or --feedback-topic TOPIC, keyed by alert_id or record_id)"
            )
        scores, labels = window.scores[labelled], window.labels[labelled].astype(int)
    else:
        scores = window.scores
        labels = (window.labels == 1).astype(int) if window.n_labelled else None
    return RefitInputs(
        scores, labels, window.scores, description, window.fingerprint(), window.source
    )


def _from_records(bundle: Any, data: Path, label_column: str) -> RefitInputs:
    from anomaly.bundle.bundle import fingerprint
    from anomaly.tabular.readers import read_table

    if bundle.schema.kind == "image":
        from anomaly.imaging.scoring import folder_scores

        scores, data_fingerprint = folder_scores(bundle, data)
        return RefitInputs(
            scores, None, None, f"{len(scores)} images scored", data_fingerprint, f"file {data}"
        )
    label = None if label_column.lower() == "none" else label_column
    table = read_table(data, bundle.schema.feature_names, None, label, "auto")
    scores = bundle.score_components(table.X).score
    return RefitInputs(
        scores,
        table.labels,
        None,
        f"{len(scores)} records of {data} scored with the bundle",
        fingerprint(table.X),
        f"file {data}",
    )
