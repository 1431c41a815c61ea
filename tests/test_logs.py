"""Serve's logging: kafka-python's shutdown false alarm is dropped, its real errors are not."""

from __future__ import annotations

import logging

import pytest

from anomaly.stream.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_loggers():
    """configure_logging rewires two loggers process-wide; other tests in this worker
    (caplog) expect them as they were."""
    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate)
        for name in ("anomaly", "kafka")
        for lg in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


class _Transport:
    def __init__(self, state: str) -> None:
        self.state = state

    def __str__(self) -> str:
        return f"<KafkaTCPTransport [none] ({self.state})>"


def _receive_on(transport: _Transport) -> None:
    """What kafka/net/transport.py logs when its socket is gone under it."""
    sock = None
    try:
        sock.recv(4096)
    except BaseException:
        logging.getLogger("kafka.net.transport").exception(
            "%s: Error receiving network data closing socket", transport
        )


def test_closed_socket_race_is_dropped_and_real_errors_kept(capfd):
    configure_logging("text", "INFO")
    _receive_on(_Transport("closed"))
    assert capfd.readouterr().err == ""
    _receive_on(_Transport("connected"))  # the same failure on a live transport is news
    logging.getLogger("kafka.conn").error("connection to broker lost")
    err = capfd.readouterr().err
    assert "Error receiving network data" in err and "Traceback" in err
    assert "connection to broker lost" in err
