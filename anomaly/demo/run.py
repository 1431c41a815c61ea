"""``anomaly demo``: the newcomer's first minute, end to end on one machine.

Starts a local Kafka-protocol broker (Tansu) on a free loopback port, trains a small GANomaly
bundle on synthetic normal card transactions (``anomaly.demo.synthetic``), streams held-out
transactions with injected fraud through ``anomaly serve``'s own start-up
(``anomaly.stream.startup.serve``, drift gauges included), prints the
alerts with their top features, how many frauds they caught, and the metrics URL, then stops
everything. No data from outside the package is needed.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from anomaly.demo import synthetic
from anomaly.demo.broker import LocalBroker, create_topic
from anomaly.stream.config import load_serve_config
from anomaly.stream.logs import configure_logging
from anomaly.stream.metrics import MetricsServer
from anomaly.stream.service import StreamService
from anomaly.stream.startup import serve
from anomaly.topics import produce, read_records


@dataclass(frozen=True)
class DemoResult:
    """What the demo streamed and what came out."""

    streamed: int
    frauds: int
    alerts: int
    frauds_caught: int
    dead_lettered: int
    bundle: Path
    metrics_url: str


def _train(out: Path, n_train: int, epochs: int, seed: int) -> Path:
    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import train_bundle

    normal = synthetic.generate(n_train, fraud_rate=0.0, seed=seed)
    path = out / "bundle"
    train_bundle(
        normal.X,
        path,
        Schema.tabular(normal.feature_names),
        detector_params={"epochs": epochs, "batch_size": 128},
        log1p_columns=["Amount"],
        target_fpr=0.01,
        seed=seed,
        name="demo-fraud",
        source="anomaly.demo.synthetic",
    )
    return path


def _quiet_kafka() -> None:
    """kafka-python logs nothing below CRITICAL in the demo."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def run_demo(
    out: Path | None = None,
    *,
    n_train: int = 6000,
    n_stream: int = 3000,
    fraud_rate: float = 0.02,
    epochs: int = 8,
    seed: int = 0,
    metrics_port: int = 9108,
    linger_s: float = 0.0,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole demo; ``linger_s`` keeps the metrics endpoint up afterwards.

    Without ``out`` the bundle lives in a temporary folder that is removed at the end.
    """
    configure_logging("text", "WARNING")
    # the local broker is the demo's own: kafka-python's connection warnings and shutdown
    # tracebacks about it are nothing a user can act on (set again once serve has configured
    # its logging, which puts kafka-python back at WARNING)
    _quiet_kafka()
    if out is None:
        with tempfile.TemporaryDirectory(prefix="anomaly-demo-") as tmp:
            echo("the demo's bundle is temporary, removed at the end (--out DIR keeps it)")
            return _run(
                Path(tmp), n_train, n_stream, fraud_rate, epochs, seed, metrics_port, linger_s, echo
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return _run(out, n_train, n_stream, fraud_rate, epochs, seed, metrics_port, linger_s, echo)


def _run(
    out: Path,
    n_train: int,
    n_stream: int,
    fraud_rate: float,
    epochs: int,
    seed: int,
    metrics_port: int,
    linger_s: float,
    echo: Callable[[str], None],
) -> DemoResult:
    echo(f"training a small GANomaly on {n_train} synthetic normal transactions ...")
    started = time.monotonic()
    bundle_path = _train(out, n_train, epochs, seed)
    echo(f"bundle written to {bundle_path} ({time.monotonic() - started:.0f} s)")

    stream = synthetic.generate(n_stream, fraud_rate=fraud_rate, seed=seed + 1)
    poison = [b"not json", b'{"V1": "oops"}', b'{"V1": NaN}']
    labels = {
        f"tx-{i}": (int(y), str(p))
        for i, (y, p) in enumerate(zip(stream.y, stream.pattern, strict=True))
    }
    with LocalBroker() as broker:
        echo(f"local Kafka-protocol broker (Tansu) on {broker.bootstrap}")
        topics = {
            "input_topic": "transactions",
            "alert_topic": "alerts",
            "dlq_topic": "transactions.dlq",
        }
        create_topic(broker.bootstrap, topics["input_topic"], partitions=3)
        bad = [(f"bad-{i}".encode(), value) for i, value in enumerate(poison)]
        produce(broker.bootstrap, topics["input_topic"], [*synthetic.records(stream), *bad])
        total = len(stream) + len(poison)
        echo(
            f"produced {len(stream)} transactions ({int(stream.y.sum())} fraud)"
            f" + {len(poison)} malformed"
        )

        config = load_serve_config(
            {
                **topics,
                "bundle": str(bundle_path),
                "group": "demo",
                "bootstrap_servers": broker.bootstrap,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "metrics_port": metrics_port,
                "alert_fields": "Amount",
                "top_features": 3,
                "log_format": "text",
                "log_level": "WARNING",
            },
            env={},
        )
        outcome: dict[str, object] = {"metrics_url": ""}

        def on_start(service: StreamService, server: MetricsServer) -> None:
            _quiet_kafka()
            outcome["metrics_url"] = server.url
            echo(f"serving; Prometheus metrics at {server.url} (also /healthz, /readyz)")
            threading.Thread(target=_stop_when_done, args=(service, total), daemon=True).start()

        def on_stop(service: StreamService, server: MetricsServer, status: int) -> None:
            alerts = [
                orjson.loads(r.value) for r in read_records(broker.bootstrap, topics["alert_topic"])
            ]
            dead = read_records(broker.bootstrap, topics["dlq_topic"])
            caught = {a["record_id"] for a in alerts if labels.get(a["record_id"], (0, ""))[0]}
            _print_alerts(alerts, labels, echo)
            echo(
                f"{len(alerts)} alerts for {len(stream)} transactions; "
                f"caught {len(caught)} of {frauds} "
                f"frauds; {len(dead)} malformed records dead-lettered; exit status {status}"
            )
            outcome.update(alerts=len(alerts), caught=len(caught), dead=len(dead))
            if linger_s > 0:
                echo(f"metrics stay up at {server.url} for {linger_s:.0f} s")
                time.sleep(linger_s)

        frauds = int(stream.y.sum())
        serve(config, on_start=on_start, on_stop=on_stop)
    return DemoResult(
        len(stream),
        frauds,
        int(outcome.get("alerts", 0)),
        int(outcome.get("caught", 0)),
        int(outcome.get("dead", 0)),
        bundle_path,
        str(outcome["metrics_url"]),
    )


def _stop_when_done(service: StreamService, total: int, timeout_s: float = 120.0) -> None:
    """Stop the service once it consumed ``total`` records (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while service.records_consumed < total and time.monotonic() < deadline:
        if service.stopping:
            return
        time.sleep(0.2)
    service.stop()


def _print_alerts(
    alerts: list[dict], labels: dict[str, tuple[int, str]], echo: Callable[[str], None]
) -> None:
    shown = sorted(alerts, key=lambda a: -a["score"])[:10]
    echo("top alerts (score, threshold, truth, top features):")
    for alert in shown:
        truth = labels.get(alert["record_id"], (0, "?"))[1]
        features = ", ".join(
            f"{f['feature']}={f['contribution']:.2f}" for f in alert["top_features"]
        )
        amount = alert["fields"].get("Amount")
        echo(
            f"  {alert['record_id']:>8}  score {alert['score']:7.2f}"
            f" (threshold {alert['threshold']:.2f})"
            f"  amount {amount if amount is not None else '-':>9}  {truth:<16} {features}"
        )
    if alerts:
        scores = np.array([a["score"] for a in alerts])
        echo(f"  ... alert scores from {scores.min():.2f} to {scores.max():.2f}")
