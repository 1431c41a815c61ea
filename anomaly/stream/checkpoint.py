"""The checkpoint: flush the producer, verify every future, then commit the offsets after the
last handled record (Quix Streams' idea), as a typed result instead of strings.

With ``exactly_once`` the commit is the producer's transaction: the input offsets are added
to it (``send_offsets_to_transaction``) and it commits, so a batch's alerts, score messages,
dead letters and offsets become visible together or not at all.

``Checkpoint.commit`` only reports; what to do about it (resume, pause, rewind, exit) is
decided in one place, ``StreamService._decide``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from anomaly.errors import AnomalyError
from anomaly.stream.output import Output


class Outcome(enum.Enum):
    """What one checkpoint attempt (or one batch's sends) came to."""

    IDLE = "idle"  # nothing handled since the last checkpoint
    COMMITTED = "committed"  # every output delivered, offsets committed
    BACKPRESSURED = "backpressured"  # deliveries still outstanding after the flush timeout
    DELIVERY_FAILED = "delivery_failed"  # a send failed: rewind to the last checkpoint
    COMMIT_FAILED = "commit_failed"  # delivered, but the offset commit was refused


@dataclass(frozen=True)
class Result:
    """A checkpoint outcome, how many records it covered and the error behind a failure."""

    outcome: Outcome
    records: int = 0
    error: BaseException | None = None


class DeliveryError(AnomalyError):
    """The retry budget is spent: ``max_delivery_failures`` checkpoints in a row failed."""


class ExitCode(enum.IntEnum):
    """Exit statuses of ``anomaly serve`` (the table in docs/streaming.md)."""

    OK = 0  # stopped by SIGTERM/SIGINT (start-up included); all handled output committed
    ABANDONED = 1  # stopped while output could not be delivered; nothing undelivered committed
    USAGE = 2  # bad configuration or bundle (one `error:` line)
    GAVE_UP = 3  # the delivery retry budget ran out


class Checkpoint:
    """Records handled since the last commit: their outputs' futures and offsets."""

    def __init__(self) -> None:
        self.futures: list[Any] = []
        self.next_offsets: dict[TopicPartition, int] = {}
        self.first_offsets: dict[TopicPartition, int] = {}
        self.records = 0
        self.started = time.monotonic()

    @property
    def empty(self) -> bool:
        """Nothing handled since the last checkpoint."""
        return not self.records and not self.futures

    def age_s(self, now: float) -> float:
        """Seconds since the last checkpoint."""
        return now - self.started

    def track(self, batch: Iterable[Any]) -> None:
        """Count a batch of consumed records as handled (their outputs follow)."""
        for record in batch:
            tp = TopicPartition(record.topic, record.partition)
            self.next_offsets[tp] = record.offset + 1
            self.first_offsets.setdefault(tp, record.offset)
            self.records += 1

    def add(self, futures: Iterable[Any]) -> None:
        """Outputs handed to the producer: kafka-python's futures, one per record, or
        ``anomaly.stream.output.Deliveries``, one per batch and topic."""
        self.futures.extend(futures)

    def settled(self) -> bool:
        """Every output's future has completed (delivered or failed)."""
        return all(f.is_done for f in self.futures)

    def failure(self) -> BaseException | None:
        """The first failed delivery, if any."""
        failed = next((f for f in self.futures if f.failed()), None)
        return None if failed is None else (failed.exception or KafkaError("send failed"))

    def offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """What to commit: the offset after the last handled record, per partition."""
        return {tp: OffsetAndMetadata(o, "", -1) for tp, o in self.next_offsets.items()}

    def reset(self) -> None:
        """Start a new checkpoint (after a commit, a rewind or an abandon)."""
        self.__init__()

    def commit(self, output: Output, consumer: KafkaConsumer, flush_timeout_s: float) -> Result:
        """One attempt: flush, verify every future, commit. Never blocks longer than
        ``flush_timeout_s`` per step, so the loop keeps polling while the output is down."""
        if self.empty:
            self.started = time.monotonic()
            return Result(Outcome.IDLE)
        try:
            output.flush(flush_timeout_s)
        except KafkaTimeoutError:
            # Still waiting; but one failed send already means a rewind, and waiting for the
            # rest could take as long as the producer keeps retrying them.
            error = self.failure()
            if error is not None:
                return Result(Outcome.DELIVERY_FAILED, self.records, error)
            return Result(Outcome.BACKPRESSURED, self.records)
        error = self.failure()
        if error is not None:
            return Result(Outcome.DELIVERY_FAILED, self.records, error)
        offsets = self.offsets()
        if output.transactional:
            try:
                output.commit_transaction(offsets, consumer.group_metadata())
            except KafkaError as exc:
                # The transaction is aborted: its outputs never become visible, so the
                # records must be scored again (a rewind), not skipped.
                return Result(Outcome.DELIVERY_FAILED, self.records, exc)
        else:
            try:
                consumer.commit(offsets, timeout_ms=int(flush_timeout_s * 1000))
            except KafkaError as exc:
                return Result(Outcome.COMMIT_FAILED, self.records, exc)
        records = self.records
        self.reset()
        return Result(Outcome.COMMITTED, records)
