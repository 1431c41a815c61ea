"""The producer side of the loop: sends, flush, and, with ``exactly_once``, the transaction
that makes a batch's alerts, score messages and dead letters visible together with its input
offsets (or not at all).

Two producers behind one interface: confluent-kafka's (librdkafka), the default, and
kafka-python's, which ``exactly_once`` always uses (its transaction carries the kafka-python
consumer's offsets). ``make_output`` picks one. librdkafka's ``produce`` cost 3-5 µs per
message here against kafka-python's ``send`` at 17-31 µs (docs/benchmarks.md, stream).

A send that cannot be handed to the producer (its buffer stayed full for the flush timeout,
or the producer is in a failed state) raises ``SendFailed``: the loop treats it like any
failed delivery (rewind, retry budget), never as a checkpoint from inside a send.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from anomaly.errors import AnomalyError
from anomaly.stream.config import ServeConfig

log = logging.getLogger(__name__)


class SendFailed(AnomalyError):
    """The producer refused a record: the batch must be rewound and retried."""


class Output:
    """One KafkaProducer (replaced after a failure when this object created it)."""

    def __init__(self, config: ServeConfig, producer: KafkaProducer | None = None):
        self.config = config
        self.transactional = config.exactly_once
        self._owns = producer is None
        self._producer = producer
        self.in_transaction = False

    @property
    def producer(self) -> KafkaProducer:
        """The live producer, created (and, for exactly-once, initialised) on first use."""
        if self._producer is None:
            producer = KafkaProducer(**self.config.producer_settings())
            if self.transactional:
                # Fences the previous incarnation of this transactional id and aborts the
                # transaction it left open (after a SIGKILL, say).
                producer.init_transactions()
            self._producer = producer
            self._fetch_topic_metadata(producer)
        return self._producer

    def _fetch_topic_metadata(self, producer: KafkaProducer) -> None:
        """Ask for the output topics' metadata in the background, now.

        A producer's first send to a topic waits for its metadata (0.1-0.5 s here, longer
        where the broker creates the topic); without this, that wait fell on whichever batch
        carried the first alert or dead letter, and every record behind it waited too.
        Best effort: a topic that cannot be resolved fails its first real send as before.
        """
        config = self.config
        topics = [t for t in (config.alert_topic, config.dlq_topic, config.scores_topic) if t]

        def fetch() -> None:
            for topic in topics:
                try:
                    producer.partitions_for(topic)
                except Exception as exc:  # any: closed or replaced meanwhile, it is moot
                    log.debug("no metadata for %s yet: %r", topic, exc)
                    return

        threading.Thread(target=fetch, name="anomaly-topic-metadata", daemon=True).start()

    def begin(self) -> None:
        """Open a transaction unless one is open (exactly-once only)."""
        if self.transactional and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True

    def send_many(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        headers: Sequence[list[Any]] | None = None,
    ) -> list[Any]:
        """Hand a batch of records for ``topic`` to the producer; returns their futures.

        One call per topic and batch: the transaction check and the error handling happen
        once, not per record (kafka-python's ``send`` is the per-record cost left).
        """
        try:
            self.begin()
            send = self.producer.send
            if headers is None:
                return [send(topic, key=k, value=v) for k, v in zip(keys, values, strict=True)]
            return [
                send(topic, key=k, value=v, headers=h)
                for k, v, h in zip(keys, values, headers, strict=True)
            ]
        except KafkaTimeoutError as exc:
            raise SendFailed(
                f"the producer's buffer stayed full for {self.config.flush_timeout_s:g} s"
            ) from exc
        except KafkaError as exc:
            raise SendFailed(f"the producer refused a record: {exc!r}") from exc

    def flush(self, timeout_s: float) -> None:
        """Wait for every buffered record; KafkaTimeoutError when that takes longer."""
        if self._producer is not None:
            self._producer.flush(timeout=timeout_s)

    def poll(self) -> None:
        """Serve delivery reports that are due (kafka-python completes its futures itself)."""

    def commit_transaction(self, offsets: Mapping[Any, Any], group_metadata: Any) -> None:
        """Add the input offsets to the open transaction and commit it (exactly-once)."""
        self.begin()
        self.producer.send_offsets_to_transaction(dict(offsets), group_metadata)
        self.producer.commit_transaction()
        self.in_transaction = False

    def abort(self) -> None:
        """Abort the open transaction, if any: its records never become visible."""
        if not (self.transactional and self.in_transaction and self._producer is not None):
            return
        self.in_transaction = False
        try:
            self._producer.abort_transaction()
        except KafkaError as exc:
            log.warning(
                "aborting the transaction failed; the next producer fences it",
                extra={"event": "abort_failed", "error": repr(exc)},
            )
            self.reset()

    def reset(self) -> None:
        """Start over with a fresh producer after a failed delivery.

        A failed send can leave kafka-python's producer unusable for good: an idempotent
        producer whose id the broker no longer knows (after a broker restart) fails every
        later send, and a transactional one may be fenced. The records are re-read from the
        last checkpoint anyway, so a new producer loses nothing. An open transaction is not
        aborted first: the new producer's ``init_transactions`` (same transactional id)
        fences and aborts it, bounded by ``max_block_ms``, where ``abort_transaction`` would
        wait without a limit on a broker that may be down.
        """
        if not self._owns or self._producer is None:
            self.abort()  # a producer we were given stays; its transaction must end here
            return
        self.in_transaction = False
        failed, self._producer = self._producer, None
        log.warning("producer replaced after a failed delivery", extra={"event": "producer_reset"})
        try:
            failed.close(timeout=0)
        except KafkaError as exc:
            log.warning("closing the failed producer: %r", exc, extra={"event": "producer_reset"})

    def close(self, clean: bool) -> None:
        """Close the producer: wait for deliveries only after a clean drain."""
        if self._producer is None:
            return
        if not clean:
            self.abort()
        if self._producer is not None:
            try:
                self._producer.close(timeout=self.config.flush_timeout_s if clean else 0)
            except KafkaError as exc:  # kafka-python 3 raises when records are left unsent
                log.warning(
                    "closed the producer with records unsent; they were not committed",
                    extra={"event": "close", "error": repr(exc)},
                )


class Deliveries:
    """The delivery reports of one ``send_many`` call: the future the checkpoint checks.

    librdkafka reports each record's delivery through a callback (run inside ``poll`` or
    ``flush``); one object per topic and batch counts them down and keeps the first error,
    so every record is still verified before its offset is committed, without a Python
    future per record.
    """

    __slots__ = ("exception", "pending")

    def __init__(self, count: int):
        self.pending = count
        self.exception: BaseException | None = None

    def report(self, error: Any, message: Any) -> None:
        """librdkafka's delivery callback for one record."""
        if error is not None and self.exception is None:
            from confluent_kafka import KafkaException

            self.exception = KafkaException(error)
        self.pending -= 1

    @property
    def is_done(self) -> bool:
        """Every record of the batch has its delivery report."""
        return self.pending <= 0

    def failed(self) -> bool:
        """A record of the batch failed to deliver (known before the rest report)."""
        return self.exception is not None


class ConfluentOutput(Output):
    """The outputs through confluent-kafka's Producer (never transactional).

    Same contract as ``Output``: ``send_many`` returns what the checkpoint verifies,
    ``flush`` raises KafkaTimeoutError when records are still outstanding, a refused record
    raises ``SendFailed``. A full local queue is waited out (serving delivery reports) for
    at most the flush timeout, as kafka-python's ``max_block_ms`` does.
    """

    def __init__(self, config: ServeConfig):
        super().__init__(config)
        self.transactional = False
        self._settings = config.confluent_producer_settings()

    @property
    def producer(self) -> Any:
        """The live confluent-kafka Producer, created on first use."""
        if self._producer is None:
            from confluent_kafka import Producer

            # librdkafka's own log lines through Python logging (serve's text or JSON
            # lines), not straight to stderr. No metadata prefetch (cf. Output):
            # librdkafka's produce never waits for it.
            self._producer = Producer(self._settings, logger=logging.getLogger("librdkafka"))
        return self._producer

    def send_many(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        headers: Sequence[list[Any]] | None = None,
    ) -> list[Any]:
        """Hand a batch of records for ``topic`` to librdkafka; one ``Deliveries`` for all."""
        from confluent_kafka import KafkaException

        producer = self.producer
        produce = producer.produce
        deliveries = Deliveries(len(values))
        report = deliveries.report
        rows = zip(keys, values, headers or [None] * len(values), strict=True)
        try:
            for key, value, header in rows:
                try:
                    produce(topic, value, key, headers=header, on_delivery=report)
                except BufferError:
                    self._produce_when_room(topic, value, key, header, report)
        except KafkaException as exc:
            raise SendFailed(f"the producer refused a record: {exc!r}") from exc
        producer.poll(0)
        return [deliveries]

    def _produce_when_room(
        self, topic: str, value: Any, key: Any, header: Any, report: Any
    ) -> None:
        """The local queue is full: serve delivery reports and try again, for at most the
        flush timeout (kafka-python's ``max_block_ms``), then refuse the batch."""
        deadline = time.monotonic() + self.config.flush_timeout_s
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, headers=header, on_delivery=report)
                return
            except BufferError as exc:
                if time.monotonic() >= deadline:
                    raise SendFailed(
                        f"the producer's buffer stayed full for {self.config.flush_timeout_s:g} s"
                    ) from exc

    def flush(self, timeout_s: float) -> None:
        """Wait for every buffered record (and serve its report); KafkaTimeoutError when
        records are still outstanding after ``timeout_s``."""
        if self._producer is not None:
            left = self._producer.flush(timeout_s)
            if left:
                raise KafkaTimeoutError(f"{left} records undelivered after {timeout_s:g} s")

    def poll(self) -> None:
        """Serve the delivery reports that are due (the revocation listener waits on them)."""
        if self._producer is not None:
            self._producer.poll(0)

    def reset(self) -> None:
        """Start over with a fresh producer after a failed delivery (the records are re-read
        from the last checkpoint): what the failed one still holds is purged, not sent."""
        failed, self._producer = self._producer, None
        if failed is None:
            return
        log.warning("producer replaced after a failed delivery", extra={"event": "producer_reset"})
        failed.purge()
        failed.close()

    def close(self, clean: bool) -> None:
        """Close the producer: wait for deliveries only after a clean drain."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if not clean:
            producer.purge()
        left = producer.flush(self.config.flush_timeout_s if clean else 0)
        if left:
            log.warning(
                "closed the producer with records unsent; they were not committed",
                extra={"event": "close", "error": f"{left} records undelivered"},
            )
            producer.purge()
        producer.close()


def make_output(config: ServeConfig, producer: KafkaProducer | None = None) -> Output:
    """The loop's output: confluent-kafka's producer unless a kafka-python one is given, or
    ``producer_client`` or ``exactly_once`` asks for kafka-python."""
    if producer is None and config.confluent_producer:
        return ConfluentOutput(config)
    return Output(config, producer)
