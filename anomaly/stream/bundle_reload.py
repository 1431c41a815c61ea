"""Bundle hot swap: a bundle path that starts resolving to another directory is loaded in a
background thread and handed to the loop, which switches to it between two batches.

``anomaly promote`` makes the live path a symbolic link and re-points it atomically (one
``rename``), so "another bundle" means "the path resolves elsewhere now": one ``realpath``
per check, every ``threshold_refresh_s``. Loading (checksums, signature, the networks,
warm-up) takes seconds; done in the loop thread it would stall every record behind it, so
it runs beside the loop, which keeps scoring with the bundle it has until the new one is
ready. A bundle that fails to load (tampered, signed by another key, another schema) is
logged and ignored, and the current one stays, until the path changes again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from anomaly.errors import AnomalyError

log = logging.getLogger(__name__)

T = TypeVar("T")


class BundleWatcher(Generic[T]):
    """Watches where ``path`` resolves; ``poll`` returns ``load(new directory)`` once ready."""

    def __init__(self, path: Path, load: Callable[[Path], T], loaded_from: Path, role: str):
        self.path = Path(path)
        self.load = load
        self.role = role  # "live" or "shadow", for the logs
        self.current = os.path.realpath(loaded_from)
        self._failed: str | None = None
        self._thread: threading.Thread | None = None
        self._outcome: tuple[str, T | None, AnomalyError | None] | None = None

    @property
    def switching(self) -> bool:
        """A new target was seen and is being loaded."""
        return self._thread is not None

    def poll(self) -> T | None:
        """The loaded new bundle once (after which it is current), else None; cheap."""
        if self._thread is not None:
            if self._thread.is_alive():
                return None
            self._thread = None
            real, value, error = self._outcome or ("", None, None)
            if error is not None or value is None:
                self._failed = real
                log.error(
                    "not switching the %s bundle to %s: %s; the current one stays",
                    self.role,
                    real,
                    error,
                    extra={"event": "bundle_switch_failed", "role": self.role, "error": str(error)},
                )
                return None
            self.current = real
            return value
        real = os.path.realpath(self.path)
        if real in (self.current, self._failed) or not (Path(real) / "manifest.json").is_file():
            return None
        log.info(
            "%s bundle path %s now resolves to %s; loading it",
            self.role,
            self.path,
            real,
            extra={"event": "bundle_change_seen", "role": self.role, "target": real},
        )
        self._thread = threading.Thread(
            target=self._load, args=(real,), name=f"anomaly-{self.role}-bundle-load", daemon=True
        )
        self._thread.start()
        return None

    def _load(self, real: str) -> None:
        try:
            self._outcome = (real, self.load(Path(real)), None)
        except AnomalyError as exc:
            self._outcome = (real, None, exc)
        except Exception as exc:  # any: poll reports it in the loop thread, which carries on
            self._outcome = (real, None, AnomalyError(f"{type(exc).__name__}: {exc}"))
