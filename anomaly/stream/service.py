"""The loop of ``anomaly serve``: poll → decode → score → produce → checkpoint.

Each turn polls, scores a micro-batch when ``max_batch`` records or ``max_wait_ms`` are
reached (``anomaly.stream.scoring``), and runs a checkpoint (``anomaly.stream.checkpoint``)
every ``commit_interval_ms``, when ``max_in_flight`` records wait, or when the input goes
quiet. ``_decide`` is the one place that turns a checkpoint result into what happens next:

- committed: carry on (and resume the input if it was paused);
- back-pressured (the producer could not deliver within the flush timeout): pause every
  assigned partition and keep polling, so the member stays in its group however long the
  output is down; retry the checkpoint each turn;
- delivery failed (a future failed, or a send was refused): rewind to the last checkpoint,
  replace the producer, pause for a back-off, and count against ``max_delivery_failures``;
  when that budget is spent, exit 3;
- commit failed (partitions moved): forget; the new owner re-reads.

Revocation is handled in ``anomaly.stream.rebalance``, threshold hot reload in
``anomaly.stream.threshold_reload``, bundle hot swap (``anomaly promote``) in
``anomaly.stream.bundle_reload``, the challenger of ``--shadow-bundle`` in
``anomaly.stream.shadow``: every ``threshold_refresh_s`` the loop checks all of them, and a
swap happens between two batches, so each record is scored by exactly one live bundle.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from anomaly.errors import AnomalyError
from anomaly.stream.bundle_reload import BundleWatcher
from anomaly.stream.checkpoint import Checkpoint, DeliveryError, ExitCode, Outcome, Result
from anomaly.stream.config import ServeConfig
from anomaly.stream.metrics import Metrics
from anomaly.stream.output import SendFailed, make_output
from anomaly.stream.rebalance import RebalanceListener
from anomaly.stream.scoring import BatchScorer, ScoredBatch, Scorer
from anomaly.stream.threshold_reload import ThresholdWatcher

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


def blas_threads(count: int) -> contextlib.AbstractContextManager[Any]:
    """At most ``count`` BLAS threads while serving (0: the library's own count).

    A batch's bank search is a small matrix product (500 x 4,096 x 64 takes ~2 ms on one
    core); on a host whose cores the Kafka clients' threads (and here the broker) share, a
    second BLAS thread mostly waits for a core: measured on 2 cores, one thread more than
    halved the search's time inside the loop and sped the whole loop up (bench/stream.py).
    """
    if count <= 0:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=count, user_api="blas")


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive at start-up (TensorFlow, Keras, the bundle) out of Python's
    cyclic garbage collector while serving.

    A full collection walks every tracked object; with TensorFlow loaded it took 200-360 ms
    here, every few seconds under a stream's allocation rate, and stalled the loop for that
    long: the latency tail of bench/stream.py. ``gc.freeze`` after one collection leaves only
    what serving allocates to be walked; reference counting still frees everything.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class LoopState(enum.Enum):
    """Whether the input is flowing, and if not, why."""

    RUNNING = "running"
    BACKPRESSURED = "backpressured"  # input paused until the outstanding outputs deliver
    BACKING_OFF = "backing_off"  # input paused after a failed delivery, until the retry time


class StreamService:
    """One consumer-group member scoring ``config.input_topic`` with ``scorer``.

    ``consumer`` defaults to a kafka-python consumer built from the config, ``producer`` to
    the client ``config.producer_client`` names (``anomaly.stream.output.make_output``). Call
    ``run()`` (blocks; returns the exit status) and ``stop()`` from a signal handler or
    another thread. ``observers`` are called with every ``ScoredBatch`` (features and scores
    of the batch just scored), in the loop thread.
    """

    def __init__(
        self,
        config: ServeConfig,
        scorer: Scorer,
        metrics: Metrics | None = None,
        *,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
        stop_event: threading.Event | None = None,
    ):
        self.config = config
        self.scorer = scorer
        self.metrics = metrics or Metrics()
        self.metrics.liveness_timeout_s = config.liveness_timeout_s
        self.batches = BatchScorer(config, scorer, self.metrics)
        self.output = make_output(config, producer)
        self.checkpoint = Checkpoint()
        self.observers: list[Callable[[ScoredBatch], None]] = []
        self.state = LoopState.RUNNING
        self.threshold = ThresholdWatcher(scorer, self.metrics)
        self.drift: Callable[[ScoredBatch], None] | None = None  # the live drift observer
        self.shadow: Any = None  # anomaly.stream.shadow.Shadow when --shadow-bundle
        # set by anomaly.stream.startup: where the live / shadow bundle paths resolve
        self.bundle_watch: BundleWatcher[BatchScorer] | None = None
        self.shadow_watch: BundleWatcher[Any] | None = None
        self._watched = time.monotonic()
        self._consumer = consumer
        self._stop = stop_event or threading.Event()
        self.pending: list[Any] = []  # polled, not yet scored
        self._pending_since = 0.0
        self._positions: dict[TopicPartition, int] = {}
        self._reread: dict[TopicPartition, int] = {}  # set on revocation, applied after poll
        self._assigned: list[TopicPartition] = []
        self._failures = 0
        self._retry_at = 0.0
        self._consumed = self.metrics.consumed.labels(topic=config.input_topic)
        self.records_consumed = 0

    # --- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit and return (signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    @property
    def assigned_partitions(self) -> int:
        """How many input partitions this member holds now."""
        return len(self._assigned)

    @property
    def consumer(self) -> KafkaConsumer:
        """The input consumer (after ``run`` connected it)."""
        return self._consumer

    @property
    def uncommitted(self) -> int:
        """Records handled since the last checkpoint."""
        return self.checkpoint.records

    def run(self) -> int:
        """Serve until stopped; returns an ``ExitCode`` (see docs/streaming.md)."""
        with blas_threads(self.config.blas_threads), frozen_heap():
            return self._run()

    def _run(self) -> int:
        self._connect()
        self.threshold.publish()
        log.info(
            "serving",
            extra={
                "event": "started",
                "input_topic": self.config.input_topic,
                "group": self.config.group,
                "model": self.scorer.model_name,
                "model_version": self.scorer.model_version,
                "threshold": self.scorer.threshold,
                "exactly_once": self.config.exactly_once,
            },
        )
        status = ExitCode.ABANDONED
        try:
            while not self._stop.is_set():
                self._step()
            if self.state is not LoopState.RUNNING:
                self.pending = []  # not scored, not committed: re-read after a restart
            failure = self._process_pending()
            status = self._decide(failure or self._checkpoint(), final=True) or ExitCode.OK
            if self.shadow is not None:
                self.shadow.publish(self.scorer)  # the report as of the last batch
        except DeliveryError as exc:
            log.error(str(exc), extra={"event": "gave_up", "failures": self._failures})
            status = ExitCode.GAVE_UP
        finally:
            self.metrics.set_ready(False)
            self.metrics.loop_stopped()
            self._close(status is ExitCode.OK)
        log.info("stopped", extra={"event": "stopped", "clean": status is ExitCode.OK})
        return int(status)

    # --- the loop ----------------------------------------------------------------------------
    def _connect(self) -> None:
        if self._consumer is None:
            self._consumer = KafkaConsumer(**self.config.consumer_settings())
        self._consumer.subscribe([self.config.input_topic], listener=RebalanceListener(self))
        # the producer now, not mid-batch: its bootstrap, the output topics' metadata and,
        # for exactly-once, init_transactions
        self.output.producer  # noqa: B018

    def _step(self) -> None:
        config = self.config
        self.metrics.beat()
        now = time.monotonic()
        if self.state is LoopState.BACKING_OFF and now >= self._retry_at:
            self._resume("retrying after a failed delivery")
        flowing = self.state is LoopState.RUNNING
        if self.pending and flowing:
            wait_ms = max(0, config.max_wait_ms - int((now - self._pending_since) * 1000))
        else:
            wait_ms = max(config.max_wait_ms, 100)
        room = max(1, config.max_batch - len(self.pending))
        polled = self._consumer.poll(timeout_ms=wait_ms, max_records=room)
        if self._reread:
            polled = self._rewind_kept(polled)
        if polled:
            if not self.pending:
                self._pending_since = time.monotonic()
            for records in polled.values():
                self.pending.extend(records)
        now = time.monotonic()
        result: Result | None = None
        if (
            self.pending
            and self.state is LoopState.RUNNING
            and (
                len(self.pending) >= config.max_batch
                or (now - self._pending_since) * 1000 >= config.max_wait_ms
            )
        ):
            result = self._process_pending()
        if (
            result is None
            and not self.checkpoint.empty
            and (
                not polled
                or self.state is LoopState.BACKPRESSURED
                or self.checkpoint.records >= config.max_in_flight
                or self.checkpoint.age_s(now) * 1000 >= config.commit_interval_ms
            )
        ):
            result = self._checkpoint()
        if result is not None:
            self._decide(result)
        self._watch(now)

    # --- hot reloads: threshold, live bundle, shadow ------------------------------------------
    def _watch(self, now: float) -> None:
        """Every ``threshold_refresh_s``: a bundle switch, else a threshold change; the
        shadow's switch, threshold and report."""
        if now - self._watched < self.config.threshold_refresh_s:
            return
        self._watched = now
        if self.bundle_watch is not None:
            batches = self.bundle_watch.poll()
            if batches is not None:
                self.switch_bundle(batches)
        if self.bundle_watch is None or not self.bundle_watch.switching:
            # while a switch loads, the live path's manifest is the next bundle's: not a
            # threshold change of this one
            self.threshold.refresh()
        if self.shadow is None:
            return
        if self.shadow_watch is not None:
            bundle = self.shadow_watch.poll()
            if bundle is not None:
                self.switch_shadow(bundle)
        if self.shadow_watch is None or not self.shadow_watch.switching:
            self.shadow.refresh_threshold()
        self.shadow.publish(self.scorer)

    def switch_bundle(self, batches: BatchScorer) -> None:
        """Make ``batches`` (a loaded, warmed-up bundle) live from the next batch on."""
        from anomaly.stream.drift import drift_monitor

        previous = self.scorer
        batches.shadow = self.batches.shadow
        self.batches, self.scorer = batches, batches.scorer
        self.threshold = ThresholdWatcher(self.scorer, self.metrics)
        self.threshold.publish()
        monitor = drift_monitor(self.scorer, self.metrics, self.config.drift_window_records)
        self.observers = [o for o in self.observers if o is not self.drift]
        if monitor is not None:
            self.observers.append(monitor)
        self.drift = monitor
        self.metrics.switch_model(self.scorer.model_name, self.scorer.model_version)
        self.metrics.bundle_reloads.inc()
        if self.shadow is not None:
            self.shadow.restart()
        log.info(
            "bundle switched",
            extra={
                "event": "bundle_switched",
                "previous_version": previous.model_version,
                "model": self.scorer.model_name,
                "model_version": self.scorer.model_version,
                "threshold": float(self.scorer.threshold),
            },
        )

    def switch_shadow(self, bundle: Any) -> None:
        """Score with another challenger from the next batch on (its comparison restarts)."""
        from anomaly.stream.shadow import require_same_features

        try:
            require_same_features(self.scorer, bundle)
        except AnomalyError as exc:
            log.error(str(exc) + "; the current shadow stays", extra={"event": "shadow_refused"})
            return
        previous = self.shadow.bundle.model_version
        self.shadow.use(bundle)
        self.metrics.shadow_reloads.inc()
        log.info(
            "shadow bundle switched",
            extra={
                "event": "shadow_switched",
                "previous_version": previous,
                "model_version": bundle.model_version,
            },
        )

    def _rewind_kept(
        self, polled: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[Any]]:
        """Seek the partitions still assigned back to where the last revocation left them,
        and drop what this poll read past that point (it is read again)."""
        targets, self._reread = self._reread, {}
        assigned = set(self._consumer.assignment())
        for tp, offset in targets.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
                self._positions[tp] = offset
        return {tp: records for tp, records in polled.items() if tp not in targets}

    def _process_pending(self) -> Result | None:
        """Score and produce the pending micro-batch; a refused send comes back as a result."""
        batch, self.pending = self.pending, []
        if not batch:
            return None
        self._consumed.inc(len(batch))
        self.records_consumed += len(batch)
        self.checkpoint.track(batch)  # first, so that a rewind covers this batch
        try:
            scored = self.batches.process(batch, self._send)
        except SendFailed as exc:
            return Result(Outcome.DELIVERY_FAILED, self.checkpoint.records, exc)
        for record in batch:
            self._positions[TopicPartition(record.topic, record.partition)] = record.offset + 1
        for observer in self.observers:
            observer(scored)
        log.debug(
            "batch",
            extra={
                "event": "batch",
                "records": scored.records,
                "alerts": scored.alerts,
                "dead_lettered": scored.dead_lettered,
            },
        )
        return None

    def _send(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        headers: Sequence[list[Any]] | None = None,
    ) -> None:
        self.checkpoint.add(self.output.send_many(topic, keys, values, headers))

    def _checkpoint(self) -> Result:
        return self.checkpoint.commit(self.output, self._consumer, self.config.flush_timeout_s)

    # --- the one place that decides ---------------------------------------------------------
    def _decide(self, result: Result, final: bool = False) -> ExitCode | None:
        """Act on a checkpoint result. ``final`` (stopping): return the exit code instead of
        pausing or retrying. Raises DeliveryError when the retry budget is spent."""
        outcome = result.outcome
        if outcome in (Outcome.IDLE, Outcome.COMMITTED):
            if outcome is Outcome.COMMITTED:
                self._failures = 0
                self.count_commit()
                log.debug("committed", extra={"event": "commit", "records": result.records})
                self._update_lag()
            if self.state is LoopState.BACKPRESSURED:
                self._resume("the output delivers again")
            return ExitCode.OK if final else None
        if outcome is Outcome.COMMIT_FAILED:
            log.warning(
                "commit failed; the records since the last commit will be re-read",
                extra={"event": "commit_failed", "error": repr(result.error)},
            )
            self.checkpoint.reset()
            return ExitCode.ABANDONED if final else None
        if outcome is Outcome.BACKPRESSURED and not final:
            if self.state is LoopState.RUNNING:
                log.warning(
                    "producer cannot deliver; input paused, still polling",
                    extra={"event": "backpressure", "uncommitted": result.records},
                )
                self._pause(LoopState.BACKPRESSURED)
            return None
        if final:
            log.error(
                "stopping with undelivered records: not committed, they will be re-read",
                extra={"event": "abandoned", "uncommitted": result.records},
            )
            self.output.abort()
            self.checkpoint.reset()
            return ExitCode.ABANDONED
        self._failures += 1
        log.error(
            "delivery failed; rewinding to the last checkpoint",
            extra={
                "event": "delivery_failed",
                "error": repr(result.error),
                "attempt": self._failures,
                "budget": self.config.max_delivery_failures,
            },
        )
        self._rewind()
        if self._failures >= self.config.max_delivery_failures:
            raise DeliveryError(
                f"{self._failures} checkpoints in a row failed to deliver: {result.error!r}"
            )
        self._retry_at = time.monotonic() + min(MAX_BACKOFF_S, 0.5 * 2 ** (self._failures - 1))
        self._pause(LoopState.BACKING_OFF)
        return None

    def _rewind(self) -> None:
        """Seek back to the first record not committed (handled or still pending)."""
        targets = dict(self.checkpoint.first_offsets)
        for record in self.pending:
            tp = TopicPartition(record.topic, record.partition)
            targets[tp] = min(targets.get(tp, record.offset), record.offset)
        assigned = set(self._consumer.assignment())
        for tp, offset in targets.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
                self._positions[tp] = offset
        self.pending = []
        self.checkpoint.reset()
        self.output.reset()

    def _pause(self, state: LoopState) -> None:
        self.state = state
        self._consumer.pause(*self._consumer.assignment())

    def _resume(self, why: str) -> None:
        self.state = LoopState.RUNNING
        self._consumer.resume(*self._consumer.paused())
        log.info("input resumed: " + why, extra={"event": "resumed"})

    # --- rebalance (called by RebalanceListener on kafka-python's IO thread, in poll/close) ----
    def drop_pending(self) -> int:
        """Forget the polled, unscored records (the next owner reads them); how many."""
        first: dict[TopicPartition, int] = {}
        for record in self.pending:
            tp = TopicPartition(record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        self.reread(first)
        dropped, self.pending = len(self.pending), []
        return dropped

    def reread(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Rewind these partitions to these offsets if this member keeps them (``_step``).

        kafka-python keeps the position of a partition that a rebalance hands back to the
        same member: without this, the records dropped on revocation (polled, unscored) or
        whose outputs were abandoned then would be skipped, never scored (found with a
        member fast enough to have polled records waiting when the rebalance came).
        """
        for tp, offset in offsets.items():
            self._reread[tp] = min(self._reread.get(tp, offset), offset)

    def count_commit(self) -> None:
        """Count a commit (the loop's or the listener's) in the metrics."""
        self.metrics.commits.inc()
        self.metrics.last_commit.set(time.time())

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """The partitions are gone: forget their positions and lag; not ready until assigned."""
        for tp in revoked:
            self._positions.pop(tp, None)
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        self._assigned = []
        self.metrics.assigned_partitions.set(0)
        self.metrics.set_ready(False)

    def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """New partitions: keep them paused while backing off, else the input flows."""
        self._assigned = assigned
        if self.state is LoopState.BACKING_OFF:
            self._consumer.pause(*assigned)
        else:
            self.state = LoopState.RUNNING
        self.metrics.assigned_partitions.set(len(assigned))
        self.metrics.set_ready(bool(assigned))
        log.info(
            "partitions assigned",
            extra={
                "event": "assigned",
                "partitions": [f"{tp.topic}-{tp.partition}" for tp in assigned],
            },
        )

    # --- lag, close -------------------------------------------------------------------
    def _update_lag(self) -> None:
        for tp in self._assigned:
            highwater = self._consumer.highwater(tp)
            position = self._positions.get(tp)
            if highwater is not None and position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )

    def _close(self, clean: bool) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("consumer close failed", extra={"event": "close", "error": repr(exc)})
        self.output.close(clean)
