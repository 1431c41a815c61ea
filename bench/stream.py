"""Stream benchmark: raw kafka-python consume→produce vs `anomaly serve`, on one broker.

    python bench/stream.py [--records 200000] [--rate 5000] [--latency-seconds 20]
                           [--exactly-once] [--shadow] [--bank-rows 4096] [--pinning exclusive]
                           [--producer-clients confluent,kafka-python]
                           [--out bench/out/stream.json] [--table RESULT.json]

1. Starts a local Tansu broker (or uses KAFKA_BOOTSTRAP), trains a small GANomaly bundle on
   synthetic transactions (29 features), and produces ``--records`` JSON records.
2. Throughput, each over every record, same topic, fresh consumer group:
   - raw: poll → send every record unchanged to an output topic → flush + commit every
     second (the same checkpoint rhythm as serve); no decoding, no model; kafka-python's
     producer defaults plus ``linger_ms=5`` (the baseline of every ratio);
   - raw, serve's producer: the same loop with serve's producer settings (``batch_size``),
     to show how much of serve's ratio is the producer's batching alone;
   - serve: the StreamService of `anomaly serve` (decode, score, alerts, DLQ, metrics,
     flush + commit every second) — alerts only, its default;
   - serve + scores: also one score message per record (as many sends as the raw loop);
   - both serve phases run once per output producer named by ``--producer-clients``
     (serve's ``producer_client``: confluent, the default, or kafka-python), interleaved,
     so that the clients are compared within one run;
   - with ``--exactly-once``, both serve phases again with a transactional producer
     (``--exactly-once``: each checkpoint commits the outputs and the offsets in one
     transaction, every second);
   - with ``--shadow``, serve (alerts only) again with a challenger bundle (the same
     recipe, another seed) scoring every batch beside the live one: once publishing its
     score messages to a shadow scores topic, once with the comparison metrics only; the
     shadow's cost is read as a ratio to the alerts-only serve phase of the same run.
3. Latency: a separate producer process offers ``--rate`` records/s for
   ``--latency-seconds``, pinned with taskset to the last CPU while this process (serve) and
   the broker are kept off it (``--pinning exclusive``, the default where there are 2+ CPUs
   and taskset exists; ``shared`` pins only the generator; ``none``). Serve (with a scores
   topic, default settings, reported in the JSON) scores them live. End-to-end latency per
   record = broker timestamp of its score message (producer CreateTime, set when serve sends
   it) minus the input record's timestamp; p50/p95/p99/max reported, beside the buckets of
   the live histogram ``anomaly_end_to_end_latency_seconds`` that hold the same quantiles.

Before the phases it times the decode stage alone (RecordDecoder on one fraud-shaped record,
best of 5 × 2,000; `decode_us_per_record` in the JSON).

Prints a Markdown table (the one in docs/benchmarks.md) and writes bench/out/stream.json;
``--table RESULT.json`` prints the table of an earlier result again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
SERVE_LABEL = "serve, default (alerts only)"
SCORES_LABEL = "serve + `--scores-topic`"
SHADOW_ROWS = (
    (SERVE_LABEL, "serve_records_per_s"),
    ("serve + `--shadow-bundle` + `--shadow-scores-topic`", "shadow_records_per_s"),
    ("serve + `--shadow-bundle`, metrics only", "shadow_metrics_only_records_per_s"),
)

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


def raw_loop(
    bootstrap: str, topic: str, n: int, group: str, producer_settings: dict | None = None
) -> float:
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
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **(producer_settings or {})
    )
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
    shadow: Path | None = None,
    shadow_scores: str | None = None,
    producer_client: str | None = None,
):
    from anomaly.stream.config import load_serve_config

    return load_serve_config(
        {
            "shadow_bundle": None if shadow is None else str(shadow),
            "shadow_scores_topic": shadow_scores,
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
            "producer_client": producer_client,
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
    shadow: Path | None = None,
    shadow_scores: str | None = None,
    producer_client: str | None = None,
) -> float:
    """records/s of the real StreamService over ``n`` records (first consumed → last committed)."""
    from anomaly.bundle.bundle import Bundle
    from anomaly.stream.service import StreamService
    from anomaly.stream.startup import attach_shadow

    config = serve_config(
        bootstrap,
        bundle_path,
        topic,
        group,
        scores,
        exactly_once,
        shadow,
        shadow_scores,
        producer_client,
    )
    service = StreamService(config, Bundle.load(bundle_path))
    service.batches.warm_up()  # as `anomaly serve` does before it consumes
    if shadow is not None:
        attach_shadow(service, config, Bundle.load(shadow))  # warmed up too
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


def cpu_plan(pinning: str) -> tuple[list[int] | None, list[int] | None]:
    """(generator CPUs, serve + broker CPUs) for ``pinning``; None where nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if pinning == "none" or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return [cpus[-1]], (cpus[:-1] if pinning == "exclusive" else None)


def pin_process(cpus: list[int]) -> None:
    """Every thread of this process (BLAS and Kafka threads included) onto ``cpus``; children
    started afterwards (the broker) inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def histogram_bucket(histogram, quantile: float) -> float:
    """Upper bound of the live histogram's bucket that holds ``quantile``."""
    counts = np.cumsum(histogram._counts)
    bounds = [*histogram.bounds, float("inf")]
    return float(bounds[int(np.searchsorted(counts, quantile * counts[-1]))])


def latency(
    bootstrap: str, bundle_path: Path, rate: float, seconds: float, generator_cpus: list[int] | None
) -> dict:
    from anomaly.bundle.bundle import Bundle
    from anomaly.stream.service import StreamService

    topic, scores = f"bench-live-{int(time.time())}", f"bench-live-scores-{int(time.time())}"
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    config = serve_config(bootstrap, bundle_path, topic, "bench-live", scores)
    service = StreamService(config, Bundle.load(bundle_path))
    service.batches.warm_up()  # as `anomaly serve` does before it consumes
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    while service.assigned_partitions < PARTITIONS:
        time.sleep(0.1)
    command = [sys.executable, "-c", OFFERED_LOAD, bootstrap, topic, str(rate), str(ROOT)]
    command.append(str(seconds))
    if generator_cpus:
        command = ["taskset", "-c", ",".join(map(str, generator_cpus)), *command]
    offered = subprocess.run(command, check=True, capture_output=True, text=True)
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
    producer = config.producer_settings()
    return {
        "offered": offered.stdout.strip(),
        "records": int(lat_ms.size),
        **{f"p{q}_ms": float(np.percentile(lat_ms, q)) for q in (50, 95, 99)},
        "max_ms": float(lat_ms.max()),
        **{f"metric_p{q}_bucket_le_s": histogram_bucket(histogram, q / 100) for q in (50, 95, 99)},
        "serve_settings": {
            "max_batch": config.max_batch,
            "max_wait_ms": config.max_wait_ms,
            "commit_interval_ms": config.commit_interval_ms,
            "blas_threads": config.blas_threads,
            "producer_client": config.producer_client,
            "producer": {k: producer.get(k) for k in ("acks", "linger_ms", "batch_size")},
        },
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


def train(out: Path, bank_rows: int, seed: int = 0) -> Path:
    from anomaly.bundle.schema import Schema
    from anomaly.bundle.training import train_bundle

    data = synthetic.generate(6000, 0.0, seed=seed)
    path = out / ("bundle" if seed == 0 else f"bundle-{seed}")
    train_bundle(
        data.X,
        path,
        Schema.tabular(data.feature_names),
        detector_params={"epochs": 5, "batch_size": 128, "bank_rows": bank_rows},
        log1p_columns=["Amount"],
        seed=seed,
        name="bench",
    )
    return path


def serve_label(label: str, client: str) -> str:
    """A serve phase's row name with the output producer it ran with."""
    return f"{label}, {client} producer"


def table(result: dict) -> str:
    """The Markdown table of docs/benchmarks.md, from a result JSON."""
    raw = result["raw_records_per_s"]
    rows = [
        ("raw consume → produce (the baseline)", raw),
        ("raw, with serve's producer settings", result["raw_serve_producer_records_per_s"]),
    ]
    by_client = result.get("producers")
    if by_client:  # one pair of serve phases per output producer
        for client, rates in by_client.items():
            rows += [
                (serve_label(SERVE_LABEL, client), rates["serve_records_per_s"]),
                (serve_label(SCORES_LABEL, client), rates["serve_with_scores_records_per_s"]),
            ]
    else:  # results from before the producer choice: kafka-python's
        rows += [
            (SERVE_LABEL, result["serve_records_per_s"]),
            (SCORES_LABEL, result["serve_with_scores_records_per_s"]),
        ]
    if "exactly_once_records_per_s" in result:
        rows += [
            ("serve `--exactly-once` (alerts only)", result["exactly_once_records_per_s"]),
            (
                "serve `--exactly-once` + `--scores-topic`",
                result["exactly_once_with_scores_records_per_s"],
            ),
        ]
    lines = ["| loop | records/s | vs raw | load (1 min) |", "|---|---|---|---|"]
    for name, rate in rows:
        load = result["load"].get(name, "")
        lines.append(f"| {name} | {rate:,.0f} | **{rate / raw:.2f}** | {load} |")
    if "shadow_records_per_s" in result:
        serve = result["serve_records_per_s"]
        lines += [
            "",
            "Shadow scoring (`--shadow-bundle`, a challenger of the same size), against the "
            "alerts-only serve phase of this run:",
            "",
            "| loop | records/s | vs serve | vs raw | load (1 min) |",
            "|---|---|---|---|---|",
        ]
        first = next(iter(by_client or {}), None)
        for name, key in SHADOW_ROWS:
            rate = result[key]
            label = serve_label(name, first) if first and name == SERVE_LABEL else name
            load = result["load"].get(label, "")
            lines.append(
                f"| {name} | {rate:,.0f} | **{rate / serve:.2f}** | {rate / raw:.2f} | {load} |"
            )
    live = result["latency"]
    if "p99_ms" in live:
        settings = live["serve_settings"]
        lines += [
            "",
            f"Latency at {live['offered_rate']:,.0f} records/s offered for {live['seconds']:g} s"
            f" (scores topic on; generator CPUs {live['generator_cpus']}, serve + broker CPUs"
            f" {live['serve_cpus']}; serve settings {json.dumps(settings)}):",
            "",
            "| | p50 | p95 | p99 | max |",
            "|---|---|---|---|---|",
            f"| score message timestamp − input timestamp ({live['records']:,} records) | "
            + " | ".join(f"{live[k]:.0f} ms" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
            + " |",
            "| live histogram `anomaly_end_to_end_latency_seconds`, bucket holding it | "
            + " | ".join(f"≤ {live[f'metric_p{q}_bucket_le_s'] * 1000:g} ms" for q in (50, 95, 99))
            + " | |",
        ]
    return "\n".join(lines)


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
        "--shadow",
        action="store_true",
        help="Also time serve with a challenger bundle scoring in shadow (two phases).",
    )
    parser.add_argument(
        "--producer-clients",
        default="confluent",
        help="Comma-separated output producers to time the two serve phases with (serve's "
        "producer_client): confluent, kafka-python. The first gives the serve rates the "
        "exactly-once and shadow phases are read against; those and the latency phase run "
        "with serve's own choice (kafka-python's producer for exactly-once).",
    )
    parser.add_argument(
        "--pinning",
        choices=("exclusive", "shared", "none"),
        default="exclusive",
        help="Latency phase: the generator on the last CPU, serve and broker off it "
        "(exclusive), or only the generator pinned (shared), or nothing pinned.",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out" / "stream.json", help="Result JSON."
    )
    parser.add_argument(
        "--table", type=Path, default=None, help="Only print the table of this result JSON."
    )
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    bundle = args.bundle or train(work, args.bank_rows)
    external = os.environ.get("KAFKA_BOOTSTRAP")
    load: dict[str, str] = {}

    def phase(name: str, label: str, run):  # noqa: ANN001, ANN202
        """Each phase gets a fresh local broker (Tansu's memory storage stalls after several
        hundred thousand messages), or the one named by KAFKA_BOOTSTRAP. The 1-minute load
        average before and after is kept: other work on the machine shows there."""
        before = os.getloadavg()[0]
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
            load[label] = f"{before:.2f} → {os.getloadavg()[0]:.2f}"

    decode_s = decode_cost()
    print(f"decode: {decode_s * 1e6:.1f} µs per record", flush=True)
    n = args.records
    producer = serve_config("127.0.0.1:9092", bundle, "t", "g", None).producer_settings()
    tuned = {"batch_size": producer["batch_size"]}
    baseline = "raw consume → produce (the baseline)"
    raw = phase("raw", baseline, lambda b, t: raw_loop(b, t, n, f"raw-{t}"))
    print(f"raw consume→produce: {raw:,.0f} records/s", flush=True)
    raw_tuned = phase(
        "rawtuned",
        "raw, with serve's producer settings",
        lambda b, t: raw_loop(b, t, n, f"rawtuned-{t}", tuned),
    )
    print(f"raw with {tuned}: {raw_tuned:,.0f} records/s", flush=True)
    clients = [c.strip() for c in args.producer_clients.split(",") if c.strip()]
    by_client: dict[str, dict[str, float]] = {c: {} for c in clients}
    for name, key, label, scores_topic in (
        ("serve", "serve_records_per_s", SERVE_LABEL, False),
        ("scores", "serve_with_scores_records_per_s", SCORES_LABEL, True),
    ):
        for client in clients:  # interleaved: drift in the machine's load hits both alike

            def run(b: str, t: str, client: str = client, scores_topic: bool = scores_topic):
                scores = f"scores-{t}" if scores_topic else None
                return serve_loop(b, bundle, t, n, f"g-{t}", scores, producer_client=client)

            rate = phase(f"{name}-{client}", serve_label(label, client), run)
            by_client[client][key] = rate
            print(f"{serve_label(label, client)}: {rate:,.0f} records/s", flush=True)
    serve = by_client[clients[0]]["serve_records_per_s"]
    serve_scores = by_client[clients[0]]["serve_with_scores_records_per_s"]
    exactly_once = {}
    if args.exactly_once:
        eos = phase(
            "eos",
            "serve `--exactly-once` (alerts only)",
            lambda b, t: serve_loop(b, bundle, t, n, f"eos-{t}", None, True),
        )
        print(f"serve --exactly-once (alerts only): {eos:,.0f} records/s", flush=True)
        eos_scores = phase(
            "eosscores",
            "serve `--exactly-once` + `--scores-topic`",
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
    shadow = {}
    if args.shadow:
        challenger = train(work, args.bank_rows, seed=1)
        published = phase(
            "shadow",
            SHADOW_ROWS[1][0],
            lambda b, t: serve_loop(
                b, bundle, t, n, f"shadow-{t}", None, shadow=challenger, shadow_scores=f"sh-{t}"
            ),
        )
        print(f"serve + shadow (+ shadow scores topic): {published:,.0f} records/s", flush=True)
        metrics_only = phase(
            "shadowmetrics",
            SHADOW_ROWS[2][0],
            lambda b, t: serve_loop(b, bundle, t, n, f"shadowm-{t}", None, shadow=challenger),
        )
        print(f"serve + shadow (metrics only): {metrics_only:,.0f} records/s", flush=True)
        shadow = {
            "shadow_records_per_s": published,
            "shadow_vs_serve": published / serve,
            "shadow_metrics_only_records_per_s": metrics_only,
            "shadow_metrics_only_vs_serve": metrics_only / serve,
        }
    live = {}
    if args.latency_seconds > 0:
        generator_cpus, serve_cpus = cpu_plan(args.pinning)
        if serve_cpus:
            pin_process(serve_cpus)  # before the phase starts its broker, which inherits it
        live = phase(
            "latency",
            "latency",
            lambda b, t: latency(b, bundle, args.rate, args.latency_seconds, generator_cpus),
        )
        live |= {"pinning": args.pinning, "generator_cpus": generator_cpus}
        live["serve_cpus"] = serve_cpus or sorted(os.sched_getaffinity(0))
        print(f"latency at {args.rate:.0f} rec/s: {live}", flush=True)
    result = {
        "records": args.records,
        "broker": "external" if external else "tansu (memory)",
        "keras_backend": keras.config.backend(),
        "bank_rows": None if args.bundle else args.bank_rows,
        "cpus": os.cpu_count(),
        "decode_us_per_record": decode_s * 1e6,
        "raw_records_per_s": raw,
        "raw_serve_producer_records_per_s": raw_tuned,
        "raw_serve_producer_settings": tuned,
        "serve_records_per_s": serve,
        "serve_ratio": serve / raw,
        "serve_with_scores_records_per_s": serve_scores,
        "serve_with_scores_ratio": serve_scores / raw,
        "producers": {
            client: {
                **rates,
                "serve_ratio": rates["serve_records_per_s"] / raw,
                "serve_with_scores_ratio": rates["serve_with_scores_records_per_s"] / raw,
            }
            for client, rates in by_client.items()
        },
        **exactly_once,
        **shadow,
        "load": load,
        "latency": {"offered_rate": args.rate, "seconds": args.latency_seconds, **live},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
