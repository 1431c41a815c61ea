"""``anomaly demo``: the newcomer's first minute, end to end on one machine.

Starts a local Kafka-protocol broker (Tansu) on a free loopback port, trains a small GANomaly
bundle on synthetic normal card transactions (``anomaly.demo.synthetic``), streams held-out
transactions with injected fraud through the same loop as ``anomaly serve``, prints the
alerts with their top features, how many frauds they caught, and the metrics URL, then stops
everything. No data from outside the package is needed.
"""

from __future__ import annotations

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
from anomaly.stream.metrics import Metrics, MetricsServer
from anomaly.stream.service import (
    StreamService,
    backend_info,
    configure_logging,
    install_signal_handlers,
)


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
    from anomaly.model.schema import Schema
    from anomaly.model.training import train_bundle

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


def _produce(bootstrap: str, topic: str, data: synthetic.Transactions, poison: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for key, value in synthetic.records(data):
        producer.send(topic, key=key, value=value)
    for i, value in enumerate(poison):
        producer.send(topic, key=f"bad-{i}".encode(), value=value)
    producer.flush()
    producer.close()


def _read(bootstrap: str, topic: str, timeout: float = 5.0) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout * 1000),
    )
    messages = [m.value for m in consumer]
    consumer.close()
    return messages


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
    """Run the whole demo; ``linger_s`` keeps the metrics endpoint up afterwards."""
    configure_logging("text", "WARNING")
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="anomaly-demo-"))
    out.mkdir(parents=True, exist_ok=True)
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
        _produce(broker.bootstrap, topics["input_topic"], stream, poison)
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
            },
            env={},
        )
        from anomaly.model.bundle import Bundle

        bundle = Bundle.load(bundle_path)
        metrics = Metrics()
        metrics.set_model(bundle.model_name, bundle.model_version, *backend_info())
        server = MetricsServer(metrics, config.metrics_host, config.metrics_port).start()
        echo(f"serving; Prometheus metrics at {server.url} (also /healthz, /readyz)")
        service = StreamService(config, bundle, metrics)
        if threading.current_thread() is threading.main_thread():
            install_signal_handlers(service)

        def stop_when_done() -> None:
            deadline = time.monotonic() + 120
            while service.records_consumed < total and time.monotonic() < deadline:
                if service.stopping:
                    return
                time.sleep(0.2)
            service.stop()

        watcher = threading.Thread(target=stop_when_done, daemon=True)
        watcher.start()
        status = service.run()
        watcher.join(timeout=1)
        alerts = [orjson.loads(value) for value in _read(broker.bootstrap, config.alert_topic)]
        dead = _read(broker.bootstrap, config.dlq_topic, timeout=2.0)
        caught = {a["record_id"] for a in alerts if labels.get(a["record_id"], (0, ""))[0] == 1}
        _print_alerts(alerts, labels, echo)
        frauds = int(stream.y.sum())
        echo(
            f"{len(alerts)} alerts for {len(stream)} transactions; "
            f"caught {len(caught)} of {frauds} "
            f"frauds; {len(dead)} malformed records dead-lettered; exit status {status}"
        )
        if linger_s > 0:
            echo(f"metrics stay up at {server.url} for {linger_s:.0f} s")
            time.sleep(linger_s)
        server.stop()
    return DemoResult(
        len(stream), frauds, len(alerts), len(caught), len(dead), bundle_path, server.url
    )


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
            f"  {alert['record_id']:>8}  score {alert['score']:7.2f} > {alert['threshold']:.2f}"
            f"  amount {amount if amount is not None else '-':>9}  {truth:<16} {features}"
        )
    if alerts:
        scores = np.array([a["score"] for a in alerts])
        echo(f"  ... alert scores from {scores.min():.2f} to {scores.max():.2f}")
