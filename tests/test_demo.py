"""The README's first command: `anomaly demo` runs end to end on a local broker."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_streams_alerts_and_dead_letters():
    port = _free_port()
    proc = subprocess.run(
        [
            shutil.which("anomaly") or "anomaly",
            "demo",
            "--records",
            "600",
            "--epochs",
            "3",
            "--metrics-port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"http://127.0.0.1:{port}/metrics" in out
    summary = re.search(
        r"(\d+) alerts for 600 transactions; caught (\d+) of (\d+) frauds; "
        r"(\d+) malformed records dead-lettered; exit status 0",
        out,
    )
    assert summary, out[-2000:]
    alerts, caught, frauds, dead = map(int, summary.groups())
    assert frauds > 0 and 0 < caught <= frauds and alerts >= caught
    assert dead == 3
    # what the user reads: nothing they cannot act on (issue 19)
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both and "retracing" not in both
    loud = [
        line
        for line in both.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) or re.match(r"[WEF]\d{4} ", line)
    ]
    assert not loud, loud
    bundle = re.search(r"bundle written to (\S+)", out)
    assert bundle and not Path(bundle.group(1)).exists()  # the temporary bundle is gone
