"""Process wiring of ``anomaly serve``: signals first, then logging, metrics server, the
bundle's checks (manifest, checksums, signature), the broker probe, the networks (TensorFlow
loads here, seconds), and the loop.

SIGTERM/SIGINT are handled from the first line of ``serve``: during start-up the signal is
logged and start-up stops at the next stage (exit 0, nothing was consumed); once the loop
runs it drains (finish the batch, flush, commit) and exits with the loop's ``ExitCode``.

``anomaly serve`` and ``anomaly demo`` both start here; the demo adds its own output through
the ``on_start`` / ``on_stop`` hooks.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from anomaly.stream.checkpoint import ExitCode
from anomaly.stream.config import ConfigError, ServeConfig
from anomaly.stream.logs import configure_logging
from anomaly.stream.metrics import Metrics, MetricsServer

if TYPE_CHECKING:
    from anomaly.stream.service import StreamService

log = logging.getLogger(__name__)

StartHook = Callable[["StreamService", MetricsServer], None]
StopHook = Callable[["StreamService", MetricsServer, int], None]  # ... and the exit status

BROKER_PROBE_MS = 10_000  # how long start-up waits for a first broker to answer


class Stoppable(Protocol):
    """Anything a signal can ask to stop."""

    def stop(self) -> None:
        """Ask it to finish and return."""


class Shutdown:
    """A stop request that can arrive before the service exists (signal during start-up)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def stop(self) -> None:
        """Request the stop (signal-safe)."""
        self.event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self.event.is_set()


def install_signal_handlers(target: Stoppable) -> None:
    """SIGTERM and SIGINT log one line and ask ``target`` to stop (main thread only)."""

    def handler(signum: int, frame: Any) -> None:
        log.info(
            "signal received; stopping",
            extra={"event": "signal", "signal": signal.Signals(signum).name},
        )
        target.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def backend_info() -> tuple[str, str]:
    """(Keras backend, Keras version) for ``anomaly_model_info``."""
    import keras

    return keras.config.backend(), keras.__version__


def check_broker(config: ServeConfig) -> None:
    """Fail in one line (exit 2) when no broker answers at ``bootstrap_servers``.

    Without this an unreachable broker shows as half a minute of kafka-python ERROR lines
    and a timeout traceback from the first send; the probe is one producer bootstrap, with
    kafka-python's own logging held back while it tries.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    settings = config.producer_settings()
    settings.pop("transactional_id", None)  # a probe, not a transactional member
    settings.pop("enable_idempotence", None)
    timeout_ms = min(settings["bootstrap_timeout_ms"], BROKER_PROBE_MS)
    settings.update(bootstrap_timeout_ms=timeout_ms, max_block_ms=timeout_ms)
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        KafkaProducer(**settings).close(timeout=1)
    except KafkaError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"no Kafka broker answered at {config.bootstrap_servers} within "
            f"{timeout_ms / 1000:g} s ({detail}); check --bootstrap-servers and the security "
            "settings, and that the broker is up"
        ) from None
    finally:
        kafka_log.setLevel(level)


def _stopped_during_startup(stage: str) -> int:
    log.info(
        "stopped during start-up",
        extra={"event": "stopped", "clean": True, "stage": stage},
    )
    return int(ExitCode.OK)


def attach_shadow(service: StreamService, config: ServeConfig, bundle: Any) -> None:
    """Score every batch of ``service`` with the challenger ``bundle`` too (warmed up)."""
    from anomaly.stream.shadow import Shadow

    shadow = Shadow(config, bundle, service.metrics)
    shadow.warm_up(service.batches.batch_sizes())
    service.shadow = service.batches.shadow = shadow
    log.info(
        "shadow scoring",
        extra={
            "event": "shadow_started",
            "model": bundle.model_name,
            "model_version": bundle.model_version,
            "report": str(shadow.report_path),
        },
    )


def watch_bundles(
    service: StreamService,
    config: ServeConfig,
    trust: dict[str, Any],
    live_dir: Path,
    shadow_dir: Path | None,
) -> None:
    """Hot swap: when the live (or shadow) path resolves to another bundle, load it with the
    same trust settings, warm it up beside the loop and switch between two batches."""
    from anomaly.bundle.bundle import Bundle
    from anomaly.stream.bundle_reload import BundleWatcher
    from anomaly.stream.scoring import BatchScorer, require_tabular

    def load_live(path: Path) -> BatchScorer:
        batches = BatchScorer(config, Bundle.load(path, **trust), service.metrics)
        batches.warm_up()
        return batches

    def load_shadow(path: Path) -> Any:
        bundle = Bundle.load(path, **trust)
        require_tabular(bundle.schema)
        width = len(bundle.schema.feature_names)
        for size in service.batches.batch_sizes():
            bundle.score_components(np.zeros((size, width), dtype=np.float64))
        return bundle

    service.bundle_watch = BundleWatcher(config.bundle, load_live, live_dir, "live")
    if shadow_dir is not None:
        service.shadow_watch = BundleWatcher(
            config.shadow_bundle, load_shadow, shadow_dir, "shadow"
        )


def serve(
    config: ServeConfig, *, on_start: StartHook | None = None, on_stop: StopHook | None = None
) -> int:
    """Run ``anomaly serve``: metrics server, bundle, loop; returns the process exit status.

    ``on_start`` runs once the service is built, before it consumes; ``on_stop`` after the
    loop returned, while the metrics server still answers (neither runs when a signal stops
    start-up).
    """
    shutdown = Shutdown()
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(shutdown)
    configure_logging(config.log_format, config.log_level)
    log.info("configuration", extra={"event": "config", "config": repr(config)})
    metrics = Metrics()
    metrics.liveness_timeout_s = config.liveness_timeout_s
    server = MetricsServer(metrics, config.metrics_host, config.metrics_port).start()
    log.info("metrics at %s", server.url, extra={"event": "metrics_listening", "url": server.url})
    try:
        if shutdown.requested:
            return _stopped_during_startup("metrics")
        from anomaly.bundle.bundle import Bundle
        from anomaly.stream.scoring import require_tabular

        trust = {"public_key": config.public_key, "require_signature": config.require_signature}
        # the directories the paths resolve to now: `anomaly promote` re-points a link later
        live_dir = Path(os.path.realpath(config.bundle))
        shadow_dir = config.shadow_bundle and Path(os.path.realpath(config.shadow_bundle))
        # a bundle that is missing, tampered with, unsigned or of images is refused first
        # (manifest, checksums and signature: no Keras yet), then the broker is probed, and
        # only then do the networks load (seconds), so neither refusal waits for TensorFlow
        checked = Bundle.load(live_dir, model=False, **trust)
        require_tabular(checked.schema)
        if shadow_dir:
            from anomaly.stream.shadow import require_same_features

            require_same_features(checked, Bundle.load(shadow_dir, model=False, **trust))
        check_broker(config)
        if shutdown.requested:
            return _stopped_during_startup("broker")
        from anomaly.stream.drift import attach_drift
        from anomaly.stream.service import StreamService

        bundle = Bundle.load(live_dir, **trust)
        if shutdown.requested:
            return _stopped_during_startup("bundle")
        backend, keras_version = backend_info()
        metrics.set_model(str(bundle.model_name), str(bundle.model_version), backend, keras_version)
        service = StreamService(config, bundle, metrics, stop_event=shutdown.event)
        service.batches.warm_up()
        if shadow_dir:
            attach_shadow(service, config, Bundle.load(shadow_dir, **trust))
        if shutdown.requested:
            return _stopped_during_startup("warm-up")
        service.drift = attach_drift(service, bundle, config.drift_window_records)
        watch_bundles(service, config, trust, live_dir, shadow_dir)
        if on_start is not None:
            on_start(service, server)
        status = service.run()
        if on_stop is not None:
            on_stop(service, server, status)
        return status
    finally:
        server.stop()
