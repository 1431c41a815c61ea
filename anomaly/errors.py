"""Errors a user can cause, each with a message a person can act on.

The CLI prints ``str(error)`` as one line and exits non-zero; the stream loop turns a
``RecordError`` into a dead letter whose reason header is ``error.reason``.
"""

from __future__ import annotations

import zipfile
import zlib

# What numpy.load and zipfile raise for a corrupt, truncated or exotic .npz file (unknown
# compression method and encryption raise NotImplementedError / RuntimeError): readers turn
# these into their own typed, one-line errors.
NPZ_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


class AnomalyError(Exception):
    """Base class of every user-facing error of this package."""


class BundleError(AnomalyError):
    """A model bundle is missing, corrupt, tampered with, or does not fit the data."""


class InputError(AnomalyError):
    """Input data cannot be used: names the file, the row (1-based, where known) and why."""

    def __init__(self, file: str, problem: str, row: int | None = None) -> None:
        self.file, self.problem, self.row = str(file), problem, row
        where = f"{self.file}, row {row}" if row is not None else self.file
        super().__init__(f"{where}: {problem}")


class RecordError(AnomalyError):
    """One streamed record cannot be decoded or scored; ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)
