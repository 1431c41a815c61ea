"""Fault and load scenarios for ``anomaly serve``: a real Tansu broker on 127.0.0.1, real
``anomaly serve`` subprocesses, real signals. Shared by ``tests/test_reliability.py`` (small,
bounded sizes, in CI) and ``bench/reliability.py`` (the figures in docs/reliability.md), so the
numbers in the document come from the same code the tests assert on.

Every scenario owns its broker (it stops, pauses or restarts it) and returns an ``Outcome``:
records in, records accounted for (each input offset found as a score message or a dead
letter), duplicates (and per crash, where crashes are injected), max RSS of the serve
processes, and scenario-specific details. Accounting reads the output topics back from the
broker; it never trusts the service's own counters alone.

Run ``python -m testsupport.reliability produce BOOTSTRAP TOPIC N SEED`` to produce ``N``
records at full speed from a separate process (the soak's load generator).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.bundle.decision import exceeds
from anomaly.demo.broker import LocalBroker, create_topic, free_port
from anomaly.topics import produce
from testsupport.data import FEATURES
from testsupport.kafka import (
    committed,
    metric_sum,
    new_topics,
    read_topic,
    scrape,
    wait_until,
)

Source = tuple[int, int]  # (partition, offset) in the input topic

POISON = (
    b"\x00\xffnot json",
    b"[1, 2, 3]",
    b'{"f0": 1.0}',
    b'{"f0": NaN, "f1": 1, "f2": 1, "f3": 1, "amount": 1}',
    b'{"f0": ' + b"[" * 40 + b"]" * 40 + b"}",
    None,
)
POISON_EVERY = 97  # about 1 % poison, of every kind in turn


# --- data ------------------------------------------------------------------------------------
def make_records(n: int, seed: int = 0, start: int = 0) -> Iterator[tuple[bytes, bytes | None]]:
    """``n`` (key, value) records: mostly normal rows, 5 % far-off anomalies, ~1 % poison."""
    chunk = 10_000
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(2, 5))
    done = 0
    while done < n:
        size = min(chunk, n - done)
        rows = rng.normal(size=(size, 2)) @ mixing + 0.05 * rng.normal(size=(size, 5))
        outliers = rng.random(size) < 0.05
        rows[outliers] = rng.normal(size=(int(outliers.sum()), 5)) * 3.0 + 4.0
        rows[:, 4] = np.abs(rows[:, 4]) * 100
        for row in rows.tolist():
            index = start + done
            key = f"r-{index}".encode()
            if index % POISON_EVERY == POISON_EVERY - 1:
                yield key, POISON[(index // POISON_EVERY) % len(POISON)]
            else:
                body = dict(zip(FEATURES, row, strict=True))
                body["id"] = f"r-{index}"
                yield key, json.dumps(body).encode()
            done += 1


def produce_records(
    bootstrap: str,
    topic: str,
    n: int,
    seed: int = 0,
    start: int = 0,
    rate: float | None = None,
    stop: threading.Event | None = None,
    burst: int = 1,
) -> int:
    """Produce ``n`` records of :func:`make_records` (at ``rate``/s on average when given, in
    bursts of ``burst`` records at full speed), wait for the acks; returns how many."""
    # The harness' own producer is not idempotent: a memory-only broker that restarts forgets
    # producer ids, and the load generator must keep going across that (the accounting reads
    # back what arrived).
    return produce(
        bootstrap,
        topic,
        make_records(n, seed, start),
        rate=rate,
        burst=burst,
        stop=stop,
        raise_on_error=False,
        linger_ms=10,
        batch_size=256 * 1024,
        enable_idempotence=False,
    )


class Feeder:
    """A background producer offering ``rate`` records/s until ``stop()``; records then
    hold how many were handed to the producer (all acknowledged once ``stop`` returns)."""

    def __init__(self, bootstrap: str, topic: str, rate: float, seed: int, burst: int = 1):
        self._stop = threading.Event()
        self.records = 0
        self._thread = threading.Thread(
            target=self._run, args=(bootstrap, topic, rate, seed, burst), daemon=True
        )
        self._thread.start()

    def _run(self, bootstrap: str, topic: str, rate: float, seed: int, burst: int) -> None:
        self.records = produce_records(
            bootstrap, topic, 10**9, seed, 0, rate, self._stop, burst=burst
        )

    def stop(self, timeout: float = 150.0) -> int:
        self._stop.set()
        self._thread.join(timeout)
        return self.records


# --- processes --------------------------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Serve:
    """``anomaly serve`` as a child process: JSON logs at DEBUG, its own metrics port, RSS
    sampled every ``rss_every`` seconds in a background thread while it lives."""

    def __init__(
        self,
        bootstrap: str,
        bundle: Path,
        topics: dict[str, str],
        log_path: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        rss_every: float = 1.0,
        log_level: str = "DEBUG",
    ):
        self.port = free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "anomaly.cli", "serve", "--bundle", str(bundle)]
        command += ["--bootstrap-servers", bootstrap, "--metrics-port", str(self.port)]
        command += ["--session-timeout-ms", "4000", "--heartbeat-interval-ms", "500"]
        command += ["--log-format", "json", "--log-level", log_level]
        for name, value in topics.items():
            command += ["--" + name.replace("_", "-"), value]
        command += list(extra)
        full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        full_env.update(env or {})
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )
        self.started = time.time()
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self._sampler = threading.Thread(target=self._sample, args=(rss_every,), daemon=True)
        self._sampler.start()

    def _sample(self, every: float) -> None:
        while self.process.poll() is None:
            value = rss_mb(self.process.pid)
            if value is not None:
                self.rss.append((time.time() - self.started, value))
            time.sleep(every)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def consumed(self) -> float:
        return metric_sum(self.metrics(), "anomaly_records_consumed_total")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> float:
        """SIGKILL now; returns the wall time of the kill."""
        at = time.time()
        self.process.send_signal(signal.SIGKILL)
        self.wait()
        return at

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the drain's exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()
            self._sampler.join(5)

    def stop(self) -> None:
        """Make sure it is gone (test teardown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()

    @property
    def max_rss(self) -> float:
        return max((v for _, v in self.rss), default=0.0)


# --- reading back and accounting ---------------------------------------------------------------
# The accounting reads every output back in full, with the read_committed isolation (the
# same view as a downstream consumer of an exactly-once service).
read_all = functools.partial(read_topic, timeout=120.0, isolation_level="read_committed")


def input_ends(bootstrap: str, topic: str, total: int) -> dict[int, int]:
    """Records per input partition, counted by reading them (Tansu's end offsets can lag)."""
    return dict(Counter(r.partition for r in read_all(bootstrap, topic, expect=total)))


@dataclass
class Accounting:
    """Every input offset against the outputs: score messages, dead letters and alerts."""

    records_in: int
    accounted: int
    missing: int
    scored_and_dead: int  # an offset both scored and dead-lettered (never expected)
    duplicates: int  # extra deliveries of an offset (score message or dead letter)
    alert_duplicates: int
    alerts_missing: int  # scored over threshold without an alert
    alerts_unexpected: int  # alerts for offsets not scored over threshold
    deliveries: dict[Source, list[int]] = field(repr=False)  # broker timestamps (ms)

    @property
    def complete(self) -> bool:
        return (
            self.missing == 0
            and self.scored_and_dead == 0
            and self.alerts_missing == 0
            and self.alerts_unexpected == 0
        )


def _dead_source(message: Any) -> Source:
    headers = {k: v for k, v in message.headers}
    return (
        int(headers["__connect.errors.partition"]),
        int(headers["__connect.errors.offset"]),
    )


def _key_index(key: bytes | None) -> int:
    """N of a :func:`make_records` key ``r-N`` (-1 for any other key)."""
    text = (key or b"").decode("utf-8", "replace")
    return int(text[2:]) if text.startswith("r-") and text[2:].isdigit() else -1


def _json_source(message: Any) -> Source:
    source = json.loads(message.value)["source"]
    return int(source["partition"]), int(source["offset"])


def account(
    bootstrap: str,
    topics: dict[str, str],
    ends: dict[int, int],
    committed_only: bool = False,
    first_index: int = 0,
) -> Accounting:
    """Reconcile: every input offset below ``ends`` must be scored or dead-lettered (not both),
    and every score over its threshold must have an alert (de-duplicated by source offset).
    ``committed_only``: reconcile the read_committed view of the outputs. ``first_index``:
    outputs of records keyed below ``r-{first_index}`` are left out (a broker that forgot
    its topics reuses their offsets, so only the keys tell its two lives apart)."""
    expected = {(p, o) for p, end in ends.items() for o in range(end)}

    def outputs(topic: str) -> list[Any]:
        messages = read_all(bootstrap, topics[topic], committed_only=committed_only)
        return [m for m in messages if first_index == 0 or _key_index(m.key) >= first_index]

    scores, dead, alerts = outputs("scores_topic"), outputs("dlq_topic"), outputs("alert_topic")
    deliveries: dict[Source, list[int]] = defaultdict(list)
    scored: set[Source] = set()
    over: set[Source] = set()
    for message in scores:
        body = json.loads(message.value)
        source = (int(body["source"]["partition"]), int(body["source"]["offset"]))
        scored.add(source)
        deliveries[source].append(message.timestamp)
        if exceeds(body["score"], body["threshold"]):
            over.add(source)
    dead_sources = set()
    for message in dead:
        source = _dead_source(message)
        dead_sources.add(source)
        deliveries[source].append(message.timestamp)
    alert_counts = Counter(_json_source(m) for m in alerts)
    seen = scored | dead_sources
    return Accounting(
        records_in=len(expected),
        accounted=len(expected & seen),
        missing=len(expected - seen),
        scored_and_dead=len(scored & dead_sources),
        duplicates=sum(len(v) - 1 for v in deliveries.values()),
        alert_duplicates=sum(n - 1 for n in alert_counts.values()),
        alerts_missing=len(over - set(alert_counts)),
        alerts_unexpected=len(set(alert_counts) - over),
        deliveries=dict(deliveries),
    )


def duplicates_per_crash(deliveries: dict[Source, list[int]], kills: list[float]) -> list[int]:
    """Attribute each repeated delivery to the first crash between it and the one before it.

    A record delivered at t1 and again at t2 was replayed because a member died between them
    without committing it. Repeats with no crash in between are counted in an extra last slot
    (at-least-once allows them after a rebalance, but they are worth seeing).
    """
    kill_ms = sorted(int(k * 1000) for k in kills)
    per_crash = [0] * (len(kill_ms) + 1)
    for stamps in deliveries.values():
        ordered = sorted(stamps)
        for before, after in zip(ordered, ordered[1:], strict=False):
            slot = next((i for i, k in enumerate(kill_ms) if before <= k <= after), None)
            per_crash[len(kill_ms) if slot is None else slot] += 1
    return per_crash


# --- outcome ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One row of docs/reliability.md."""

    scenario: str
    runs: int
    faults: str
    records_in: int
    accounted: int
    duplicates: int
    max_rss_mb: float
    seconds: float
    ok: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drained(bootstrap: str, topics: dict[str, str], ends: dict[int, int]) -> Callable[[], bool]:
    """A predicate: the group's commits reached the end of every input partition."""
    partitions = len(ends)

    def check() -> bool:
        try:
            offsets = committed(bootstrap, topics["group"], topics["input_topic"], partitions)
        except Exception:  # the broker may be restarting; keep asking
            return False
        return all((offsets.get(p) or 0) >= end for p, end in ends.items())

    return check


# --- the scaffold every scenario runs on ------------------------------------------------------
class Stage:
    """One scenario's own broker (a second one for the outputs when ``outputs_apart``), its
    topics, feeder, serve processes and helper processes. Leaving the ``with`` block stops the
    feeder, every serve process and helper, and the brokers, whatever happened."""

    def __init__(
        self, bundle: Path, workdir: Path, name: str, partitions: int, outputs_apart: bool = False
    ):
        self.began = time.monotonic()
        self.bundle = bundle
        self.workdir = workdir
        self.name = name
        self.partitions = partitions
        self.outputs_apart = outputs_apart
        self.members: list[Serve] = []
        self._feeders: list[Feeder] = []
        self._helpers: list[subprocess.Popen] = []
        self._brokers: list[LocalBroker] = []

    def __enter__(self) -> Stage:
        try:
            self.broker = self._start_broker(f"tansu-{self.name}.log")
            self.sink = self.broker
            if self.outputs_apart:
                self.sink = self._start_broker(f"tansu-{self.name}-out.log")
            self.topics = new_topics(self.broker.bootstrap, self.partitions, self.name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_broker(self, log_name: str) -> LocalBroker:
        broker = LocalBroker(log_path=self.workdir / log_name)
        self._brokers.append(broker)
        return broker.start()

    def close(self) -> None:
        """Stop everything the scenario started (idempotent)."""
        for feeder in self._feeders:
            feeder.stop(10)
        for helper in self._helpers:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
        for serve in self.members:
            serve.stop()
        for broker in self._brokers:
            broker.stop()

    # --- what a scenario starts -----------------------------------------------------------
    def feed(self, rate: float, seed: int, burst: int = 1) -> Feeder:
        """A background producer into the input topic."""
        feeder = Feeder(self.broker.bootstrap, self.topics["input_topic"], rate, seed, burst)
        self._feeders.append(feeder)
        return feeder

    def produce(self, records: int, seed: int, start: int = 0) -> int:
        """``records`` into the input topic at full speed; returns how many."""
        return produce_records(
            self.broker.bootstrap, self.topics["input_topic"], records, seed=seed, start=start
        )

    def serve(self, log_name: str, *extra: str, **options: Any) -> Serve:
        """A serve process on this stage's topics (outputs to the sink broker when apart)."""
        if self.outputs_apart:
            env = options.setdefault("env", {})
            env.setdefault("ANOMALY_PRODUCER__BOOTSTRAP_SERVERS", self.sink.bootstrap)
        serve = Serve(
            self.broker.bootstrap,
            self.bundle,
            self.topics,
            self.workdir / log_name,
            *extra,
            **options,
        )
        self.members.append(serve)
        return serve

    def spawn(self, command: list[str], **popen: Any) -> subprocess.Popen:
        """A helper process (killed when the stage closes)."""
        process = subprocess.Popen(command, **popen)
        self._helpers.append(process)
        return process

    # --- what a scenario asks ---------------------------------------------------------------
    @staticmethod
    def wait_started(serve: Serve, consumed: float, every: float = 0.1) -> None:
        """Wait (up to 120 s) until ``serve`` consumed ``consumed`` records, or fail."""
        if not wait_until(lambda: serve.consumed() >= consumed, 120, every):
            raise AssertionError("serve never got going:\n" + serve.log())

    def committed(self) -> dict[int, int | None]:
        """The group's committed offset per input partition."""
        return committed(
            self.broker.bootstrap, self.topics["group"], self.topics["input_topic"], self.partitions
        )

    def ends(self, total: int) -> dict[int, int]:
        """Records per input partition once ``total`` were produced."""
        return input_ends(self.broker.bootstrap, self.topics["input_topic"], total)

    def wait_drained(self, ends: dict[int, int], timeout: float) -> bool:
        """Wait until the group committed to ``ends``; whether it did in ``timeout`` s."""
        return bool(wait_until(drained(self.broker.bootstrap, self.topics, ends), timeout, 0.5))

    def account(
        self, ends: dict[int, int], committed_only: bool = False, first_index: int = 0
    ) -> Accounting:
        """Reconcile the inputs below ``ends`` against the outputs on the sink broker."""
        return account(self.sink.bootstrap, self.topics, ends, committed_only, first_index)

    def outcome(
        self,
        scenario: str,
        faults: str,
        books: Accounting,
        ok: bool,
        details: dict[str, Any],
        runs: int = 1,
    ) -> Outcome:
        """The scenario's row: the books, the members' peak RSS and the time since it began."""
        return Outcome(
            scenario=scenario,
            runs=runs,
            faults=faults,
            records_in=books.records_in,
            accounted=books.accounted,
            duplicates=books.duplicates,
            max_rss_mb=self.max_rss,
            seconds=self.seconds,
            ok=ok,
            details={**details, "accounting": _books(books)},
        )

    @property
    def max_rss(self) -> float:
        return max((m.max_rss for m in self.members), default=0.0)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.began


# --- scenarios --------------------------------------------------------------------------------
class Supervised:
    """Keeps one serve process running the way an orchestrator would (restart on exit), and
    records every exit: a process that keeps exiting is a crash loop."""

    def __init__(self, make: Callable[[int], Serve]):
        self._make = make
        self.exits: list[dict[str, Any]] = []
        self.current = make(0)
        self.started = 1

    def check(self) -> Serve:
        """Restart the service if it exited on its own; returns the live process."""
        serve = self.current
        if not serve.alive:
            status = serve.wait()
            errors = [e for e in serve.events() if e.get("level") == "ERROR"]
            last = serve.log().strip().splitlines()[-1:] or [""]
            self.exits.append(
                {
                    "status": status,
                    "last_line": last[0][:300],
                    "last_error": (errors[-1].get("message", "") if errors else "")[:300],
                }
            )
            self.current = self._make(self.started)
            self.started += 1
        return self.current


SECOND_LIFE = 10_000_000  # first record index fed to a restarted broker


def broker_restart(
    bundle: Path,
    workdir: Path,
    records: int = 20_000,
    downtime_s: float = 6.0,
    idempotent: bool = True,
    rate: float = 2000.0,
) -> Outcome:
    """Stop the broker while records flow in at ``rate``/s (memory storage: every topic is
    lost), start it again on the
    same port, recreate the topics and re-produce. The service runs under a supervisor that
    restarts it if it exits (as Kubernetes would): it must recover, re-join and account for
    every re-produced record, with at most one exit (more is a crash loop).

    ``idempotent=False`` passes ``ANOMALY_PRODUCER__ENABLE_IDEMPOTENCE=false`` (kafka-python's
    default is an idempotent producer, whose producer id a memory-only broker forgets).
    Records in/accounted are those of the broker's second life (the first life's data died
    with it).
    """
    env = {} if idempotent else {"ANOMALY_PRODUCER__ENABLE_IDEMPOTENCE": "false"}
    label = "idempotent" if idempotent else "plain"
    with Stage(bundle, workdir, "restart", 2) as stage:
        broker = stage.broker
        feeder = stage.feed(rate, seed=1)
        supervisor = Supervised(
            lambda n: stage.serve(f"serve-restart-{label}-{n}.log", env=dict(env))
        )
        if not wait_until(lambda: supervisor.check().consumed() >= 2 * rate, 120, 0.1):
            raise AssertionError("serve never got going:\n" + supervisor.current.log())
        first = feeder.stop()
        uncommitted_at_stop = supervisor.current.consumed() - sum(
            v or 0 for v in stage.committed().values()
        )
        broker.stop()
        stopped_at = time.monotonic()
        time.sleep(downtime_s)
        alive_while_down = supervisor.current.alive
        broker.start()
        restarted_in = time.monotonic() - stopped_at
        create_topic(broker.bootstrap, stage.topics["input_topic"], partitions=2)
        # Keys of the second life start far above any the first life fed, so outputs of
        # first-life records still buffered in the producer are told apart by key: they
        # land in the recreated topics under offsets the second life reuses.
        second = stage.produce(records, seed=2, start=SECOND_LIFE)
        ends = stage.ends(second)
        done = drained(broker.bootstrap, stage.topics, ends)
        caught_up = wait_until(lambda: supervisor.check() and done(), 180, 0.5)
        ready = wait_until(lambda: supervisor.check().metrics().get("anomaly_ready{}") == 1, 30)
        status = supervisor.current.terminate()
        books = stage.account(ends, first_index=SECOND_LIFE)
        exits = supervisor.exits
        ok = bool(alive_while_down and caught_up and ready and status == 0 and books.complete)
        ok = ok and len(exits) <= 1
        return stage.outcome(
            f"broker restart ({label} producer)",
            f"broker stopped {downtime_s:.0f} s mid-stream (topics lost), restarted; "
            f"{len(exits)} service exit(s)",
            books,
            ok,
            {
                "first_life_records": first,
                "consumed_not_committed_at_stop": uncommitted_at_stop,
                "alive_while_broker_down": alive_while_down,
                "broker_down_s": round(restarted_in, 1),
                "caught_up_after_restart": bool(caught_up),
                "ready_again": bool(ready),
                "service_exits": exits,
                "exit_status": status,
            },
        )


def broker_stall(
    bundle: Path,
    workdir: Path,
    rate: float = 2000.0,
    stall_s: float = 8.0,
    after_s: float = 5.0,
    request_timeout_ms: int = 5000,
    exactly_once: bool = False,
) -> Outcome:
    """SIGSTOP the broker for longer than the session timeout (4 s) and the clients' request
    timeout (``ANOMALY_KAFKA__REQUEST_TIMEOUT_MS``, 5 s here; 30 s by default, so a stall past
    it behaves the same) while records flow in at ``rate``/s, then SIGCONT: the clients give
    up on their connections, reconnect and carry on; everything committed before the stall
    stays delivered, and every record (fed before, during and ``after_s`` after) is
    accounted for.

    ``exactly_once``: serve runs with ``--exactly-once`` and short producer timeouts (request
    1.5 s, delivery 2.5 s, flush 1 s), so the transactions open during the stall fail; the
    service rewinds with a fresh transactional producer, and the read_committed view of the
    outputs must hold every record exactly once."""
    with Stage(bundle, workdir, "stall", 2) as stage:
        feeder = stage.feed(rate, seed=3)
        serve = stage.serve(
            "serve-stall.log",
            "--max-batch",
            "100",
            *(("--exactly-once", "--delivery-timeout-s", "1") if exactly_once else ()),
            env={
                "ANOMALY_KAFKA__REQUEST_TIMEOUT_MS": str(request_timeout_ms),
                **(
                    {
                        "ANOMALY_PRODUCER__REQUEST_TIMEOUT_MS": "1500",
                        "ANOMALY_PRODUCER__DELIVERY_TIMEOUT_MS": "2500",
                    }
                    if exactly_once
                    else {}
                ),
            },
        )
        stage.wait_started(serve, 3 * rate)
        before = stage.committed()
        stage.broker.pause()
        time.sleep(stall_s)
        alive_in_stall = serve.alive
        stage.broker.resume()
        time.sleep(after_s)
        total = feeder.stop()
        ends = stage.ends(total)
        caught_up = stage.wait_drained(ends, 180)
        after = stage.committed()
        status = serve.terminate()
        books = stage.account(ends, committed_only=exactly_once)
        kept = all((after.get(p) or 0) >= (before.get(p) or 0) for p in ends)
        committed_delivered = all(
            (p, o) in books.deliveries for p, end in before.items() for o in range(end or 0)
        )
        events = serve.events()
        rejoined = sum(1 for e in events if e.get("event") == "assigned")
        commit_failures = sum(1 for e in events if e.get("event") == "commit_failed")
        delivery_failures = sum(1 for e in events if e.get("event") == "delivery_failed")
        timeouts = sum(1 for e in events if "timed out" in str(e.get("message", "")).lower())
        ok = bool(alive_in_stall and caught_up and status == 0 and books.complete)
        ok = ok and kept and committed_delivered
        if exactly_once:
            ok = ok and books.duplicates == 0 and books.alert_duplicates == 0
        return stage.outcome(
            "network stall (broker SIGSTOP)" + (" (--exactly-once)" if exactly_once else ""),
            f"broker SIGSTOP {stall_s:.0f} s (> 4 s session, "
            f"{request_timeout_ms / 1000:.0f} s request timeouts) under {rate:.0f} records/s, "
            "then SIGCONT",
            books,
            ok,
            {
                "committed_before_stall": before,
                "committed_after": after,
                "committed_kept": kept,
                "committed_records_delivered": committed_delivered,
                "assignments_seen": rejoined,
                "commit_failures_logged": commit_failures,
                "delivery_failures_logged": delivery_failures,
                "request_timeouts_logged": timeouts,
                "alive_during_stall": alive_in_stall,
                "exit_status": status,
            },
        )


def crash_runs(
    bundle: Path,
    workdir: Path,
    crashes: int = 20,
    rate: float = 1500.0,
    seed: int = 0,
    max_batch: int = 100,
    max_in_flight: int = 2000,
    exactly_once: bool = False,
) -> Outcome:
    """SIGKILL serve at random moments, ``crashes`` times, while a producer feeds the input at
    ``rate`` records/s; then one last member drains, and every input offset is reconciled.

    The input comes in bursts (two seconds' worth at full speed, every two seconds). Every
    third crash is a kill during a rebalance: a new member is started while the current one
    runs, and the current one is killed as soon as it logs that its partitions are being
    revoked. Of the others, one in two is aimed into a burst (killed within 0.3 s of seeing
    consumption move), the rest after a random 0-4 s of serving; a fresh member then starts.
    Each kill is classified from the broker afterwards: ``after_commit`` (nothing delivered
    past the last commit: the next batch was not yet produced), ``uncommitted`` (outputs
    delivered, not committed: between produce and commit), ``rebalance`` or ``startup``
    (killed before it held partitions).

    ``exactly_once``: serve runs with ``--exactly-once`` and the outputs are reconciled in
    their read_committed view, where no record may appear twice. Every replacement reuses the
    killed member's transactional id (as a restarted pod of a StatefulSet would), so it
    aborts the transaction its predecessor left open; kills during a rebalance (two live
    members, hence two ids) are left out.
    """
    rng = random.Random(seed)
    with Stage(bundle, workdir, "crash", 3) as stage:
        # Bursts: the member alternates between busy (outputs waiting for their commit) and
        # idle (everything committed), so random kills land in both.
        feeder = stage.feed(rate, seed=5, burst=int(rate * 2))
        extra = ("--max-batch", str(max_batch), "--max-in-flight", str(max_in_flight))
        if exactly_once:
            extra += ("--exactly-once",)

        def member(name: str) -> Serve:
            return stage.serve(f"crash-{name}.log", *extra)

        def holds_partitions(serve: Serve) -> bool:
            return serve.metrics().get("anomaly_assigned_partitions{}", 0) > 0

        current = member("0")
        kills: list[float] = []
        kinds: list[str] = []
        for i in range(crashes):
            if not wait_until(lambda s=current: holds_partitions(s), 120, 0.2):
                raise AssertionError("member never got partitions:\n" + current.log())
            if i % 3 == 2 and not exactly_once:
                # Crash during a rebalance: a new member joins, the current one starts revoking.
                already = sum(1 for e in current.events() if e.get("event") == "revoked")
                joiner = member(f"{i + 1}")
                revoking = wait_until(
                    lambda s=current, n=already: (
                        sum(1 for e in s.events() if e.get("event") == "revoked") > n
                    ),
                    120,
                    0.02,
                )
                kills.append(current.kill())
                kinds.append("rebalance" if revoking else "no_rebalance_seen")
                current = joiner
            else:
                if i % 3 == 1:
                    # Aim into a burst: once consumption is seen moving, kill within 0.3 s.
                    wait_until(lambda s=current: _consuming(s), 10, 0.0)
                    time.sleep(rng.uniform(0.0, 0.3))
                else:
                    time.sleep(rng.uniform(0.0, 4.0))
                kills.append(current.kill())
                kinds.append(_classify_kill(stage.broker.bootstrap, stage.topics, kills[-1]))
                current = member(f"{i + 1}")
        total = feeder.stop()
        ends = stage.ends(total)
        caught_up = stage.wait_drained(ends, 240)
        status = current.terminate()
        books = stage.account(ends, committed_only=exactly_once)
        per_crash = duplicates_per_crash(books.deliveries, kills)
        bound = 0 if exactly_once else max_in_flight + max_batch
        ok = bool(caught_up and status == 0 and books.complete)
        ok = ok and max(per_crash[:-1], default=0) <= bound and per_crash[-1] == 0
        ok = ok and (not exactly_once or books.alert_duplicates == 0)
        return stage.outcome(
            "SIGKILL crash runs" + (" (--exactly-once)" if exactly_once else ""),
            f"{crashes} SIGKILLs ({_tally(kinds)})",
            books,
            ok,
            {
                "kill_kinds": kinds,
                "duplicates_per_crash": per_crash[:-1],
                "max_duplicates_per_crash": max(per_crash[:-1], default=0),
                "duplicates_without_crash": per_crash[-1],
                "in_flight_bound": bound,
                "offered_rate": rate,
                "exactly_once": exactly_once,
                "final_exit_status": status,
            },
            runs=crashes,
        )


def rebalance_under_load(
    bundle: Path, workdir: Path, rate: float = 3000.0, after_s: float = 5.0
) -> Outcome:
    """A second member joins while the first is busy (records handled, not yet committed):
    both must survive the rebalance (no exit, no listener error), split the partitions and,
    between them, account for every record."""
    with Stage(bundle, workdir, "rebalance", 4) as stage:
        feeder = stage.feed(rate, seed=8)
        # A checkpoint interval longer than the join takes: the first member's revocation
        # then always finds handled, uncommitted records (with 3 s, a periodic commit could
        # land just before the revocation and leave nothing for it to commit).
        extra = ("--max-batch", "100", "--commit-interval-ms", "30000")
        first = stage.serve("rebalance-a.log", *extra)
        stage.wait_started(first, 2 * rate)
        stage.serve("rebalance-b.log", *extra)
        members = stage.members

        def split() -> bool:
            held = [m.metrics().get("anomaly_assigned_partitions{}", 0) for m in members]
            return all(m.alive for m in members) and min(held) >= 1 and sum(held) == 4

        was_split = wait_until(split, 90, 0.3)
        time.sleep(after_s)
        alive = [m.alive for m in members]
        total = feeder.stop()
        ends = stage.ends(total)
        caught_up = stage.wait_drained(ends, 120)
        statuses = [m.terminate() if m.alive else m.wait() for m in members]
        books = stage.account(ends)
        listener_errors = sum(
            1
            for m in members
            for e in m.events()
            if "rebalance listener" in str(e.get("message", "")).lower()
        )
        # The first member's revocation: the commit it awaited (or why it handed over without
        # one), and whether kafka-python ever saw heartbeats lapse meanwhile.
        first_events = first.events()
        revoke_commits = sum(1 for e in first_events if e.get("event") == "revoke_commit")
        uncommitted_at_revoke = [
            e.get("uncommitted", 0) for e in first_events if e.get("event") == "revoked"
        ]
        revoke_abandons = sum(1 for e in first_events if e.get("event") == "revoke_abandon")
        heartbeat_lapses = sum(
            1
            for m in members
            for e in m.events()
            if any(
                text in str(e.get("message", ""))
                for text in ("Heartbeat session expired", "poll timeout has expired")
            )
        )
        ok = bool(was_split and all(alive) and caught_up and books.complete)
        ok = ok and statuses == [0, 0] and listener_errors == 0
        return stage.outcome(
            "rebalance under load",
            f"a second member joins while the first is busy ({rate:.0f} records/s)",
            books,
            ok,
            {
                "split": bool(was_split),
                "alive_after_rebalance": alive,
                "exit_statuses": statuses,
                "listener_errors_logged": listener_errors,
                "revoke_commits": revoke_commits,
                "revoke_abandons": revoke_abandons,
                "uncommitted_at_revoke": uncommitted_at_revoke,
                "heartbeat_lapses": heartbeat_lapses,
            },
        )


def _consuming(serve: Serve) -> bool:
    """Whether the consumed counter moves over 50 ms."""
    before = serve.consumed()
    time.sleep(0.05)
    return serve.consumed() > before


def _classify_kill(bootstrap: str, topics: dict[str, str], at: float) -> str:
    """Where a kill landed, judged from the broker: outputs past the last commit or not."""
    offsets = committed(bootstrap, topics["group"], topics["input_topic"], 3)
    at_ms = int(at * 1000)
    delivered: dict[int, int] = {}
    for message in read_all(bootstrap, topics["scores_topic"], idle=0.5):
        if message.timestamp <= at_ms:
            p, o = _json_source(message)
            delivered[p] = max(delivered.get(p, -1), o)
    if not delivered:
        return "startup"
    past_commit = any(o >= (offsets.get(p) or 0) for p, o in delivered.items())
    return "uncommitted" if past_commit else "after_commit"


def back_pressure(
    bundle: Path,
    workdir: Path,
    records: int = 60_000,
    pause_s: float = 10.0,
    max_batch: int = 200,
    max_in_flight: int = 2000,
    max_poll_interval_ms: int = 5000,
) -> Outcome:
    """Input on broker A, outputs on broker B (``ANOMALY_PRODUCER__BOOTSTRAP_SERVERS``); B is
    SIGSTOPped mid-stream for ``pause_s``, longer than ``max_poll_interval_ms``. The service
    must pause its input once ``max_in_flight`` records wait for delivery (consumed −
    committed stays bounded, RSS flat) while it keeps polling: the member keeps its
    partitions (no revocation, no poll-timeout warning from kafka-python, /healthz 200),
    then resumes and accounts for every record when B comes back."""
    with Stage(bundle, workdir, "bp", 2, outputs_apart=True) as stage:
        total = stage.produce(records, seed=4)
        ends = stage.ends(total)
        serve = stage.serve(
            "serve-bp.log",
            "--max-batch",
            str(max_batch),
            "--max-in-flight",
            str(max_in_flight),
            "--delivery-timeout-s",
            "2",
            "--max-poll-interval-ms",
            str(max_poll_interval_ms),
            rss_every=0.5,
        )
        stage.wait_started(serve, total // 10, every=0.05)
        stage.sink.pause()
        paused_at = time.time()
        samples = []
        held = []  # partitions held, sampled over /metrics through the pause
        healthy = []
        while time.time() - paused_at < pause_s:
            metrics = serve.metrics()
            samples.append(
                (time.time() - paused_at, metric_sum(metrics, "anomaly_records_consumed_total"))
            )
            held.append(metrics.get("anomaly_assigned_partitions{}"))
            healthy.append(_healthy(serve))
            time.sleep(0.5)
        at_resume = stage.committed()
        consumed_in_pause = samples[-1][1]
        uncommitted = consumed_in_pause - sum(v or 0 for v in at_resume.values())
        # Flat: over the second half of the pause, consumption did not move.
        half = [c for t, c in samples if t >= pause_s / 2]
        stalled = bool(half) and max(half) == min(half)
        alive = serve.alive and _healthy(serve)
        rss_in_pause = [v for t, v in serve.rss if t >= paused_at - serve.started]
        stage.sink.resume()
        caught_up = stage.wait_drained(ends, 180)
        status = serve.terminate()
        books = stage.account(ends)
        warned = serve.has_event("backpressure")
        resumed = serve.has_event("resumed")
        events = serve.events()
        revocations = _revocations(events)
        poll_timeouts = sum(1 for e in events if "poll timeout" in str(e.get("message", "")))
        kept = set(held) == {2.0}
        bound = max_in_flight + max_batch
        ok = bool(stalled and alive and caught_up and status == 0 and books.complete)
        ok = ok and 0 <= uncommitted <= bound and warned and consumed_in_pause < total
        ok = ok and kept and all(healthy) and revocations == 0 and poll_timeouts == 0
        return stage.outcome(
            "slow downstream (output broker SIGSTOP)",
            f"alert/DLQ/scores broker SIGSTOP {pause_s:.0f} s "
            f"(max_poll_interval {max_poll_interval_ms / 1000:g} s)",
            books,
            ok,
            {
                "consumed_while_paused": [c for _, c in samples],
                "uncommitted_at_resume": uncommitted,
                "in_flight_bound": bound,
                "polling_stopped": stalled,
                "backpressure_logged": warned,
                "resumed_logged": resumed,
                "partitions_held_while_paused": held,
                "healthy_while_paused": all(healthy),
                "revocations": revocations,
                "poll_timeout_warnings": poll_timeouts,
                "max_poll_interval_ms": max_poll_interval_ms,
                "rss_while_paused_mb": [round(v, 1) for v in rss_in_pause],
                "exit_status": status,
            },
        )


def output_failures(
    bundle: Path,
    workdir: Path,
    records: int = 20_000,
    pause_s: float = 8.0,
    max_delivery_failures: int = 5,
    max_poll_interval_ms: int = 5000,
) -> Outcome:
    """Outputs on broker B, which is SIGSTOPped for ``pause_s`` while the producer's request
    and delivery timeouts are short (1.5 s / 2.5 s): sends fail and a fresh producer cannot
    even bootstrap. Each failed checkpoint rewinds and counts against
    ``--max-delivery-failures``; within the budget the service stays up (no exit, no lost
    partition) and drains once B is back; past it, it exits 3 and a restarted member
    re-reads what was not committed. Either way every record is accounted for."""
    with Stage(bundle, workdir, "of", 2, outputs_apart=True) as stage:
        total = stage.produce(records, seed=9)
        ends = stage.ends(total)
        env = {
            "ANOMALY_PRODUCER__REQUEST_TIMEOUT_MS": "1500",
            "ANOMALY_PRODUCER__DELIVERY_TIMEOUT_MS": "2500",
        }
        extra = (
            "--max-batch",
            "200",
            "--max-in-flight",
            "2000",
            "--delivery-timeout-s",
            "1",
            "--max-delivery-failures",
            str(max_delivery_failures),
            "--max-poll-interval-ms",
            str(max_poll_interval_ms),
        )
        first = stage.serve("of-0.log", *extra, env=dict(env))
        stage.wait_started(first, total // 10, every=0.05)
        stage.sink.pause()
        paused_at = time.monotonic()
        exited = wait_until(lambda: not first.alive, pause_s, 0.2)
        alive_through = first.alive
        stage.sink.resume()
        outage_s = time.monotonic() - paused_at
        failures = sum(1 for e in first.events() if e.get("event") == "delivery_failed")
        if first.alive:
            caught_up = stage.wait_drained(ends, 180)
            statuses = [first.terminate()]
        else:
            statuses = [first.wait()]
            second = stage.serve("of-1.log", *extra, env=dict(env))
            caught_up = stage.wait_drained(ends, 180)
            statuses.append(second.terminate())
        books = stage.account(ends)
        revocations = _revocations(first.events())
        gave_up = first.has_event("gave_up")
        ok = bool(caught_up and books.complete and statuses[-1] == 0)
        return stage.outcome(
            "output failures (retry budget)",
            f"output broker SIGSTOP {outage_s:.0f} s, failing sends; "
            f"budget {max_delivery_failures}",
            books,
            ok,
            {
                "delivery_failures_logged": failures,
                "alive_through_outage": alive_through,
                "exited_during_outage": bool(exited),
                "gave_up_logged": gave_up,
                "revocations": revocations,
                "exit_statuses": statuses,
                "caught_up": bool(caught_up),
            },
        )


def soak(
    bundle: Path,
    workdir: Path,
    records: int = 1_000_000,
    rss_every: float = 3.0,
    warmup_fraction: float = 0.2,
    growth_bound_mb: float = 64.0,
) -> Outcome:
    """``records`` through one serve process at the highest rate this machine sustains: a
    separate producer process writes at full speed while serve consumes. RSS is sampled every
    ``rss_every`` s; after warm-up (the first ``warmup_fraction`` of records) it must not grow
    by more than ``growth_bound_mb``. Accounting uses the committed offsets and the service's
    counters plus the alert and dead-letter topics (no scores topic: it would double the
    broker's memory for a million records)."""
    with Stage(bundle, workdir, "soak", 3) as stage:
        topics = stage.topics
        topics.pop("scores_topic")
        producer = stage.spawn(
            [
                sys.executable,
                "-m",
                "testsupport.reliability",
                "produce",
                stage.broker.bootstrap,
                topics["input_topic"],
                str(records),
                "6",
            ],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            text=True,
        )
        serve = stage.serve("serve-soak.log", rss_every=rss_every, log_level="INFO")
        progress: list[tuple[float, float]] = []
        warm: list[tuple[float, float]] = []  # (seconds since serve start, MiB) at warm-up end

        def finished() -> bool:
            consumed = serve.consumed()
            progress.append((stage.seconds, consumed))
            if not warm and consumed >= records * warmup_fraction and serve.rss:
                warm.append(serve.rss[-1])
            return consumed >= records

        done = wait_until(finished, 3600, rss_every)
        sent = int(producer.communicate(timeout=600)[0].strip() or 0)
        ends = stage.ends(sent)
        caught_up = stage.wait_drained(ends, 120)
        samples = serve.metrics()
        status = serve.terminate()
        consumed = metric_sum(samples, "anomaly_records_consumed_total")
        scored = samples.get("anomaly_records_scored_total{}", 0)
        dead = metric_sum(samples, "anomaly_records_dead_lettered_total")
        dlq = read_all(stage.broker.bootstrap, topics["dlq_topic"])
        dead_sources = {_dead_source(m) for m in dlq}
        warm_rss = warm[0][1] if warm else None
        after_warm = [v for t, v in serve.rss if warm and t >= warm[0][0]]
        growth = max(after_warm) - warm_rss if warm_rss is not None else float("inf")
        # Rate from the first consumed record to the last (not counting serve's start-up).
        moving = [t for t, c in progress if c > 0]
        elapsed = max(moving) - min(moving) if len(moving) > 1 else 0.0
        poison = sum(1 for i in range(sent) if i % POISON_EVERY == POISON_EVERY - 1)
        accounted = int(scored + len(dead_sources)) if consumed == sent else 0
        ok = bool(done and caught_up and status == 0 and consumed == sent == scored + dead)
        ok = ok and len(dead_sources) == poison and growth <= growth_bound_mb
        return Outcome(
            scenario="soak",
            runs=1,
            faults="none (sustained load)",
            records_in=sent,
            accounted=accounted,
            duplicates=int(consumed - sent),
            max_rss_mb=serve.max_rss,
            seconds=stage.seconds,
            ok=ok,
            details={
                "records_per_s": round(sent / elapsed, 1) if elapsed else None,
                "rss_after_warmup_mb": round(warm_rss, 1) if warm_rss is not None else None,
                "rss_growth_after_warmup_mb": round(growth, 1),
                "growth_bound_mb": growth_bound_mb,
                "rss_samples_mb": [round(v, 1) for _, v in serve.rss],
                "rss_every_s": rss_every,
                "dead_lettered": len(dead_sources),
                "poison_produced": poison,
                "exit_status": status,
            },
        )


def _revocations(events: list[dict[str, Any]]) -> int:
    """Partitions taken away while serving: revoked/lost events that name partitions, before
    the stop signal (joining revokes nothing; stopping revokes everything)."""
    count = 0
    for event in events:
        if event.get("event") == "signal":
            break
        if event.get("event") in ("revoked", "lost") and event.get("partitions"):
            count += 1
    return count


def _healthy(serve: Serve) -> bool:
    """/healthz answers 200 (the metrics thread lives even while the loop is blocked)."""
    import urllib.request

    try:
        with urllib.request.urlopen(serve.url.replace("/metrics", "/healthz"), timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _books(books: Accounting) -> dict[str, int]:
    summary = asdict(books)
    summary.pop("deliveries")
    return summary


def _tally(kinds: list[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(kinds).items()))


SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "restart": broker_restart,
    "stall": broker_stall,
    "crash": crash_runs,
    "rebalance": rebalance_under_load,
    "backpressure": back_pressure,
    "output_failures": output_failures,
    "soak": soak,
}


def _main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "produce":
        _, bootstrap, topic, n, seed = argv
        print(produce_records(bootstrap, topic, int(n), int(seed)))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
