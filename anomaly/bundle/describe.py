"""Human-readable text for a bundle manifest (``anomaly info``)."""

from __future__ import annotations

from typing import Any


def stability_events(log: list[dict[str, Any]]) -> list[str]:
    """Training-stability events of a training log (collapse, non-finite losses), apart from
    the self-check's verdict, which is the safeguard doing its job, not a broken model."""
    return sorted(
        {e for entry in log if entry.get("phase") != "self_check" for e in entry.get("events", [])}
    )


def left_out_of_score(log: list[dict[str, Any]]) -> list[str]:
    """Components the (last) self-check left out of the score."""
    checks = [e for e in log if e.get("phase") == "self_check"]
    return list(checks[-1].get("left_out", [])) if checks else []


def describe_manifest(manifest: dict[str, Any]) -> str:
    """A few aligned sections: model, schema, preprocessing, score, training, thresholds."""
    model = manifest["model"]
    schema = manifest["schema"]
    lines = [
        f"model        {model['name']} ({model['detector']}), version {model['version']}",
        f"created      {model['created_at']}",
    ]
    runtime = manifest.get("runtime", {})
    lines.append(
        f"runtime      keras {runtime.get('keras_version')} on {runtime.get('keras_backend')}, "
        f"python {runtime.get('python_version')}"
    )
    if schema["kind"] == "image":
        h, w, c = schema["image_shape"]
        lines.append(f"input        images {h}x{w}x{c}")
    else:
        names = [f["name"] for f in schema["features"]]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        lines.append(f"input        {len(names)} features: {shown}")
    prep = manifest.get("preprocessing", {})
    if prep.get("kind") == "tabular":
        logs = ", ".join(prep.get("log1p_columns") or []) or "none"
        lines.append(f"preprocess   {prep['scaler']} scaling; signed log1p on: {logs}")
    else:
        opts = ", ".join(f"{k}={v}" for k, v in prep.items() if k != "kind")
        lines.append(f"preprocess   image: {opts}")
    score = manifest.get("score", {})
    weights = ", ".join(f"{k}={v}" for k, v in score.get("weights", {}).items())
    lines.append(f"score        weights {weights}")
    if score.get("formula"):
        lines.append(f"             {score['formula']}")
    training = manifest.get("training", {})
    lines.append(
        f"training     {training.get('n_train')} train / {training.get('n_validation')} "
        f"validation / {training.get('n_calibration')} calibration rows, "
        f"{training.get('epochs_run')} epochs, {training.get('seconds')} s, "
        f"seed {training.get('seed')}"
    )
    labels = training.get("labels") or {}
    if labels.get("anomalies"):
        use = "learned by the label head" if labels.get("learned") else "left out of training"
        lines.append(
            f"labels       {labels['anomalies']} labelled anomalies ({labels.get('source')}), {use}"
        )
    if training.get("lineage"):
        lines.append(f"lineage      {describe_lineage(training['lineage'])}")
    log = training.get("log", [])
    events = stability_events(log)
    lines.append(f"stability    {', '.join(events) if events else 'no warnings'}")
    checks = [e for e in log if e.get("phase") == "self_check"]
    if checks:
        aurocs = ", ".join(f"{k}={v:.2f}" for k, v in checks[-1]["auroc_vs_corrupted"].items())
        lines.append(f"self-check   AUROC normal vs corrupted normal: {aurocs}")
        left_out = left_out_of_score(log)
        if left_out:
            lines.append(
                f"             left out of the score (ranks corruptions below normals): "
                f"{', '.join(left_out)}"
            )
    lines.append("thresholds")
    for entry in manifest.get("thresholds", []):
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in entry.get("params", {}).items()
        )
        lines.append(
            f"  v{entry['version']:<3} {entry['value']:<12.6g} {entry['method']:<9} "
            f"{params:<40} {entry['timestamp']}  {entry.get('data_fingerprint', '')}"
        )
    lines.append(f"files        {len(manifest.get('files', {}))} (sha256 verified on load)")
    return "\n".join(lines)


def describe_lineage(lineage: dict[str, Any]) -> str:
    """One line on where a retrained bundle's data came from."""
    parent = lineage["parent"]
    verdicts = lineage["verdicts"]
    refused = sum(lineage["undecodable"].values())
    left_out = lineage["above_threshold_left_out"]
    spans = ", ".join(f"p{p} {lo}-{hi}" for p, (lo, hi) in lineage["offsets"].items())
    return (
        f"from topic {lineage['topic']} ({lineage['records_read']} records; offsets "
        f"{spans}), parent {parent['name']} {parent['version']} at threshold "
        f"v{parent['threshold_version']}; {verdicts['anomalies']} confirmed anomalies, "
        f"{verdicts['normals']} confirmed normals; {left_out} unconfirmed alerts and "
        f"{refused} undecodable records left out"
    )
