"""Stream benchmark: raw kafka-python consume→produce vs `anomaly serve`, on one broker.

    python bench/stream.py [--records 200000] [--rate 5000] [--latency-seconds 20]
                           [--exactly-once] [--bank-rows 4096] [--out bench/out/stream.json]

1. Starts a local Tansu broker (or uses KAFKA_BOOTSTRAP), trains a small GANomaly bundle on
   synthetic transactions (29 features), and produces ``--records`` JSON records.
2. Throughput, each over every record, same topic, fresh consumer group:
   - raw: poll → send every record unchanged to an output topic → flush + commit every
     second (the same checkpoint rhythm as serve); no decoding, no model;
   - serve: the StreamService of `anomaly serve` (decode, score, alerts, DLQ, metrics,
     flush + commit every second) — alerts only, its default;
   - serve + scores: also one score message per record (as many sends as the raw loop);
   - with ``--exactly-once``, both serve phases again with a transactional producer
     (``--exactly-once``: each checkpoint commits the outputs and the offsets in one
     transaction, every second).
3. Latency: a separate producer process offers ``--rate`` records/s for
   ``--latency-seconds``; serve (with a scores topic) scores them live. End-to-end latency
   per record = broker timestamp of its score message (producer CreateTime, set when serve
   sends it) minus the input record's timestamp; p50/p99 reported.

Before the phases it times the decode stage alone (RecordDecoder on one fraud-shaped record,
best of 5 × 2,000; `decode_us_per_record` in the JSON).

Prints a table and writes bench/out/stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

from anomaly.demo import synthetic  # noqa: E402
from anomaly.demo.broker import LocalBroker, create_topic  # noqa: E402

PARTITIONS = 3

OFFERED_LOAD = r"""
import sys, time
from kafka import KafkaProducer
sys.path.insert(0, sys.argv[4])
from anomaly.demo import synthetic
bootstrap, topic, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[5])
data = synthetic.generate(int(rate * seconds), 0.01, seed=7)
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
start = time.perf_counter()
for i, (key, value) in enumerate(synthetic.records(data)):
    due = start + i / rate
    delay = due - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    producer.send(topic, key=key, value=value)
producer.flush()
print(f"offered {len(data)} records in {time.perf_counter() - start:.1f} s")
"""


def produce_all(bootstrap: str, topic: str, n: int) -> None:
    data = synthetic.generate(n, 0.01, seed=3)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1
    )
    for key, value in synthetic.records(data):
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def raw_loop(bootstrap: str, topic: str, n: int, group: str) -> float:
    """records/s of poll → send each record → flush + commit every second."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    seen = 0
    started = None
    offsets: dict[TopicPartition, int] = {}
    last_commit = time.monotonic()
    while seen < n:
        polled = consumer.poll(timeout_ms=100)
        for tp, records in polled.items():
            if started is None:
                started = time.perf_counter()
            for record in records:
                producer.send("raw-out", key=record.key, value=record.value)
            offsets[tp] = records[-1].offset + 1
            seen += len(records)
        if offsets and (time.monotonic() - last_commit >= 1.0 or seen >= n):
            producer.flush()
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
            offsets.clear()
            last_commit = time.monotonic()
    elapsed = time.perf_counter() - started
    consumer.close(autocommit=False)
    producer.close()
    return n / elapsed


def serve_config(
    bootstrap: str,
    bundle: Path,
    topic: str,
    group: str,
    scores: str | None,
    exactly_once: bool = False,
):
    from anomaly.stream.config import load_serve_config

    return load_serve_config(
        {
            "bundle": str(bundle),
            "input_topic": topic,
            "alert_topic": "bench-alerts",
            "dlq_topic": "bench-dlq",
            "scores_topic": scores,
            "group": group,
            "bootstrap_servers": bootstrap,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "exactly_once": exactly_once,
            "transactional_id": f"bench-{group}",
        },
        env={},
    )


def serve_loop(
    bootstrap: str,
    bundle_path: Path,
    topic: str,
    n: int,
    group: str,
    scores: str | None,
    exactly_once: bool = False,
) -> float:
    """records/s of the real StreamService over ``n`` records (first consumed → last committed)."""
    from anomaly.bundle.bundle import Bundle
    from anomaly.stream.service import StreamService

    service = StreamService(
        serve_config(bootstrap, bundle_path, topic, group, scores, exactly_once),
        Bundle.load(bundle_path),
    )
    marks: dict[str, float] = {}

    def watch() -> None:
        while service.records_consumed == 0:
            time.sleep(0.001)
        marks["start"] = time.perf_counter()
        while service.records_consumed < n:
            time.sleep(0.005)
        service.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    service.run()
    elapsed = time.perf_counter() - marks["start"]
    return n / elapsed


def latency(bootstrap: str, bundle_path: Path, rate: float, seconds: float) -> dict[str, float]:
    from anomaly.bundle.bundle import Bundle
    from anomaly.stream.service import StreamService

    topic, scores = f"bench-live-{int(time.time())}", f"bench-live-scores-{int(time.time())}"
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    service = StreamService(
        serve_config(bootstrap, bundle_path, topic, "bench-live", scores), Bundle.load(bundle_path)
    )
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    while service.assigned_partitions < PARTITIONS:
        time.sleep(0.1)
    offered = subprocess.run(
        [sys.executable, "-c", OFFERED_LOAD, bootstrap, topic, str(rate), str(ROOT), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    expected = int(rate * seconds)
    deadline = time.monotonic() + 60
    while service.records_consumed < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    service.stop()
    runner.join(30)
    consumer = KafkaConsumer(
        scores,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    lat = []
    for message in consumer:
        body = json.loads(message.value)
        lat.append((message.timestamp - body["event_timestamp_ms"]) / 1000)
    consumer.close()
    lat_ms = np.array(lat) * 1000
    histogram = service.metrics.end_to_end_latency
    counts = np.cumsum(histogram._counts)
    bounds = list(histogram.bounds) + [float("inf")]
    metric_p99 = bounds[int(np.searchsorted(counts, 0.99 * counts[-1]))]
    metric_p50 = bounds[int(np.searchsorted(counts, 0.50 * counts[-1]))]
    return {
        "metric_p50_bucket_le_s": metric_p50,
        "metric_p99_bucket_le_s": metric_p99,
        "offered": offered.stdout.strip(),
        "records": int(lat_ms.size),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "max_ms": float(lat_ms.max()),
    }


def decode_cost() -> float:
    """Best-of-5 seconds per record for RecordDecoder on a fraud-shaped JSON record (29
    features and an id): the stream's decode stage alone, beside kafka-python's own cost."""
    from anomaly.stream.records import RecordDecoder

    names = [f"V{i}" for i in range(1, 29)] + ["Amount"]
    decoder = RecordDecoder(names)
    value = json.dumps({**{n: 0.123456789 * i for i, n in enumerate(names)}, "id": "tx-1"})
    encoded = value.encode()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2000):
            decoder.decode(encoded)
        best = min(best, (time.perf_counter() - started) / 2000)
    return best


def train(out: Path, bank_rows: int) -> Path:
    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import train_bundle

    data = synthetic.generate(6000, 0.0, seed=0)
    path = out / "bundle"
    train_bundle(
        data.X,
        path,
        Schema.tabular(data.feature_names),
        detector_params={"epochs": 5, "batch_size": 128, "bank_rows": bank_rows},
        log1p_columns=["Amount"],
        seed=0,
        name="bench",
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--bundle", type=Path, default=None, help="Use this bundle instead.")
    parser.add_argument(
        "--bank-rows",
        type=int,
        default=4096,
        help="Memory-bank size of the trained bundle (the `anomaly train` default: 4096).",
    )
    parser.add_argument(
        "--exactly-once", action="store_true", help="Also time both serve phases transactional."
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out" / "stream.json", help="Result JSON."
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    bundle = args.bundle or train(work, args.bank_rows)
    external = os.environ.get("KAFKA_BOOTSTRAP")

    def phase(name: str, run):  # noqa: ANN001, ANN202
        """Each phase gets a fresh local broker (Tansu's memory storage stalls after several
        hundred thousand messages), or the one named by KAFKA_BOOTSTRAP."""
        broker = None if external else LocalBroker().start()
        bootstrap = external or broker.bootstrap
        try:
            topic = f"bench-{name}-{int(time.time())}"
            create_topic(bootstrap, topic, partitions=PARTITIONS)
            if name != "latency":
                t = time.perf_counter()
                produce_all(bootstrap, topic, args.records)
                print(f"[{name}] produced {args.records} in {time.perf_counter() - t:.1f} s")
            return run(bootstrap, topic)
        finally:
            if broker is not None:
                broker.stop()

    decode_s = decode_cost()
    print(f"decode: {decode_s * 1e6:.1f} µs per record", flush=True)
    n = args.records
    raw = phase("raw", lambda b, t: raw_loop(b, t, n, f"raw-{t}"))
    print(f"raw consume→produce: {raw:,.0f} records/s", flush=True)
    serve = phase("serve", lambda b, t: serve_loop(b, bundle, t, n, f"serve-{t}", None))
    print(f"serve (alerts only): {serve:,.0f} records/s", flush=True)
    serve_scores = phase(
        "scores", lambda b, t: serve_loop(b, bundle, t, n, f"scores-{t}", f"scores-{t}")
    )
    print(f"serve + scores topic: {serve_scores:,.0f} records/s", flush=True)
    exactly_once = {}
    if args.exactly_once:
        eos = phase("eos", lambda b, t: serve_loop(b, bundle, t, n, f"eos-{t}", None, True))
        print(f"serve --exactly-once (alerts only): {eos:,.0f} records/s", flush=True)
        eos_scores = phase(
            "eosscores",
            lambda b, t: serve_loop(b, bundle, t, n, f"eosscores-{t}", f"scores-{t}", True),
        )
        print(f"serve --exactly-once + scores topic: {eos_scores:,.0f} records/s", flush=True)
        exactly_once = {
            "exactly_once_records_per_s": eos,
            "exactly_once_ratio": eos / raw,
            "exactly_once_vs_serve": eos / serve,
            "exactly_once_with_scores_records_per_s": eos_scores,
            "exactly_once_with_scores_ratio": eos_scores / raw,
            "exactly_once_with_scores_vs_serve_with_scores": eos_scores / serve_scores,
        }
    live = {}
    if args.latency_seconds > 0:
        live = phase("latency", lambda b, t: latency(b, bundle, args.rate, args.latency_seconds))
        print(f"latency at {args.rate:.0f} rec/s: {live}", flush=True)
    result = {
        "records": args.records,
        "broker": "external" if external else "tansu (memory)",
        "keras_backend": keras.config.backend(),
        "bank_rows": None if args.bundle else args.bank_rows,
        "decode_us_per_record": decode_s * 1e6,
        "raw_records_per_s": raw,
        "serve_records_per_s": serve,
        "serve_ratio": serve / raw,
        "serve_with_scores_records_per_s": serve_scores,
        "serve_with_scores_ratio": serve_scores / raw,
        **exactly_once,
        "latency": {"offered_rate": args.rate, "seconds": args.latency_seconds, **live},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
