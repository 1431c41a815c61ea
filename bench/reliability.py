"""Reliability bench: fault and load scenarios against `anomaly serve`, written to
docs/reliability.md.

    python bench/reliability.py                       # every scenario, full sizes (long)
    python bench/reliability.py --only crash --crashes 20
    python bench/reliability.py --only soak --soak-records 1000000

Each scenario starts its own Tansu broker on 127.0.0.1 (it stops, pauses or restarts it),
runs real `anomaly serve` subprocesses and injects real signals; the scenario code lives in
testsupport/reliability.py, shared with tests/test_reliability.py. Results are merged
into bench/out/reliability.json (a scenario run again replaces its row) and the table in
docs/reliability.md is rewritten from it, with the command that produced each row; rows of
scenarios not in the JSON (not run on this checkout) are kept from the current document.
Broker and serve logs stay under bench/out/reliability-logs/.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testsupport.data import train_tiny_bundle  # noqa: E402
from testsupport.reliability import (  # noqa: E402
    Outcome,
    back_pressure,
    broker_restart,
    broker_stall,
    crash_runs,
    output_failures,
    rebalance_under_load,
    soak,
)

RESULTS = ROOT / "bench" / "out" / "reliability.json"
DOC = ROOT / "docs" / "reliability.md"
ORDER = (
    "restart",
    "restart-plain",
    "stall",
    "crash",
    "crash-eos",
    "rebalance",
    "backpressure",
    "output-failures",
    "soak",
)
TITLES = {  # scenario titles as the table shows them (to keep rows not re-run)
    "restart": "broker restart (idempotent producer)",
    "restart-plain": "broker restart (plain producer)",
    "stall": "network stall (broker SIGSTOP)",
    "crash": "SIGKILL crash runs",
    "crash-eos": "SIGKILL crash runs (--exactly-once)",
    "rebalance": "rebalance under load",
    "backpressure": "slow downstream (output broker SIGSTOP)",
    "output-failures": "output failures (retry budget)",
    "soak": "soak",
}


def run(names: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, Outcome]:
    bundle = train_tiny_bundle(workdir / "bundle")
    plans = {
        "restart": lambda: broker_restart(bundle, workdir, args.restart_records, 6.0, True),
        "restart-plain": lambda: broker_restart(bundle, workdir, args.restart_records, 6.0, False),
        "stall": lambda: broker_stall(bundle, workdir, args.stall_rate, args.stall_seconds),
        "crash": lambda: crash_runs(bundle, workdir, args.crashes, args.crash_rate, args.seed),
        "crash-eos": lambda: crash_runs(
            bundle, workdir, args.eos_crashes, args.crash_rate, args.seed, exactly_once=True
        ),
        "rebalance": lambda: rebalance_under_load(bundle, workdir, args.rebalance_rate),
        "backpressure": lambda: back_pressure(
            bundle, workdir, args.backpressure_records, args.pause_seconds
        ),
        "output-failures": lambda: output_failures(
            bundle, workdir, args.output_failure_records, args.output_outage_seconds
        ),
        "soak": lambda: soak(bundle, workdir, args.soak_records, args.rss_every),
    }
    outcomes = {}
    for name in names:
        print(f"--- {name}", flush=True)
        try:
            outcome = plans[name]()
        except Exception as exc:  # one broken scenario must not lose the others' figures
            outcome = Outcome(name, 0, "scenario error", 0, 0, 0, 0.0, 0.0, False)
            outcome.details = {"error": repr(exc)[:2000]}
        outcomes[name] = outcome
        print(
            f"{outcome.scenario}: ok={outcome.ok} in={outcome.records_in} "
            f"accounted={outcome.accounted} duplicates={outcome.duplicates} "
            f"max_rss={outcome.max_rss_mb:.0f} MiB ({outcome.seconds:.0f} s)",
            flush=True,
        )
    return outcomes


def merge(outcomes: dict[str, Outcome], command: str) -> dict[str, dict]:
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, outcome in outcomes.items():
        rows[name] = {**outcome.to_dict(), "command": command, "when": stamp}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1, default=str))
    return rows


def _notes(name: str, row: dict) -> str:
    d = row["details"]
    if "error" in d:
        return f"scenario error: {d['error'][:200]}"
    if name.startswith("restart"):
        exits = d.get("service_exits", [])
        why = f"; exit: {exits[0]['last_line'][:120]}" if exits else ""
        return f"{len(exits)} service exit(s), ready again: {d.get('ready_again')}{why}"
    if name == "stall":
        return (
            f"committed before stall kept: {d['committed_kept']}, its records delivered: "
            f"{d['committed_records_delivered']}"
        )
    if name == "crash-eos":
        books = d["accounting"]
        return (
            f"read_committed view: {books['duplicates']} duplicate outputs, "
            f"{books['alert_duplicates']} duplicate alerts, {books['missing']} missing"
        )
    if name == "crash":
        return (
            f"duplicates per crash max {d['max_duplicates_per_crash']} "
            f"(bound {d['in_flight_bound']}), without a crash {d['duplicates_without_crash']}"
        )
    if name == "rebalance":
        return (
            f"both members alive after the join: {all(d['alive_after_rebalance'])}, "
            f"listener errors {d['listener_errors_logged']}"
        )
    if name == "backpressure":
        return (
            f"input paused: {d['polling_stopped']}, uncommitted at resume "
            f"{d['uncommitted_at_resume']:.0f} (bound {d['in_flight_bound']}), partitions kept: "
            f"{d.get('revocations') == 0}, poll-timeout warnings {d.get('poll_timeout_warnings')}"
        )
    if name == "output-failures":
        return (
            f"{d['delivery_failures_logged']} failed deliveries rewound, exit statuses "
            f"{d['exit_statuses']}, partitions revoked {d['revocations']}"
        )
    if name == "soak":
        return (
            f"{d['records_per_s']} records/s; RSS growth after warm-up "
            f"{d['rss_growth_after_warmup_mb']} MiB (bound {d['growth_bound_mb']})"
        )
    return ""


FINDINGS = """## What these runs found

- **Fixed: a busy member died when another joined the group.** kafka-python 3 calls sync
  rebalance listeners on its IO thread, where the revocation checkpoint's blocking
  `commit()` raised `RuntimeError`; `poll()` then raised and `serve` exited (and, with the
  dead member never rejoining, the newcomer waited without partitions). Only a member with
  handled-but-uncommitted records was affected, so idle two-member tests passed. The
  listener is now an `AsyncConsumerRebalanceListener`: it waits for in-flight outputs with
  kafka-python's awaitable sleep (heartbeats continue) and awaits the commit. The
  *rebalance under load* row was re-run with it on 2026-12-07 (ok: 166,996 of 166,996,
  both members alive); the 21-crash row of that run is below.
- **Fixed: an output outage longer than `max_poll_interval_ms` dropped the member.** The
  checkpoint used to block without polling while the producer could not deliver. The input
  partitions are now paused and `poll()` continues (row *slow downstream*: an outage longer
  than a 5 s `max_poll_interval_ms`, no revocation, no poll-timeout warning).
- **Fixed: one refused send exited with code 2.** A send blocked on a full buffer or on
  metadata raised out of the checkpoint that ran inside it. Sends now only report a typed
  failure; the loop rewinds and counts it against `--max-delivery-failures`, and exits 3
  only when that budget is spent (row *output failures*).
- **Exactly-once, and a Tansu gap.** With `--exactly-once` the outputs and offsets of a batch
  commit in one transaction. Tansu 0.6 writes the abort markers but returns no
  aborted-transaction list in fetch responses, so its read_committed consumers still see the
  records of aborted transactions (those a SIGKILL left open); the test reader rebuilds the
  abort index from the markers it fetched (`testsupport.kafka.transaction_markers`), as a
  Kafka broker would. Row *SIGKILL crash runs (--exactly-once)* counts that view.
- **Fixed: hostile image files** (IDX headers claiming huge or empty frames, corrupt gzip
  streams, NPZ members with unknown compression or the encryption flag) raised
  `MemoryError` / `OverflowError` / `zlib.error` / `RuntimeError` instead of a classified
  `ImageReadError` (found by the hypothesis fuzzing in `tests/test_hostile.py`).
- **Fixed: a broker that forgets producer ids no longer stops the service.** kafka-python's
  producer is idempotent by default; after the memory-only broker restarts, its producer id
  is unknown and Tansu answers the re-initialisation with an error that kafka-python treats
  as fatal, so every later send failed and `serve` exited after five failed checkpoints
  (one exit per restart, recovered by the supervisor). `serve` now replaces its producer
  after a failed checkpoint and re-reads from the last commit: the same process rides
  through the restart (0 exits in both restart rows). The price is at-least-once replay of
  the records handled since the last commit at each failed checkpoint, visible as the
  duplicates of the idempotent row.
- **Not ok (2026-12-07): the 21-crash row no longer drains.** 113,955 of 777,001 input
  offsets had no output when the 240 s drain ended; none was scored twice *and*
  dead-lettered, no alert is missing, the last member exited 0. Its log shows why: at this
  scenario's `max_batch` 100, with the tiny bundle alerting on ~75 % of the records and a
  scores topic on, a member handles ~1,400 records/s (a batch of 100 every 60-80 ms) against
  the feeder's 1,500 records/s, and each restart takes ~22 s before the first batch (Keras
  start-up and the bundle on a 2-core machine with the feeder and the broker beside it).
  The backlog only grows, so the books stay open: a throughput shortfall, not a lost
  record, but the row is not ok until the member outruns the feed (issue 23: the bank
  search and per-record sends are the batch's cost; the 2026-11-23 row predates the memory
  banks). The stall and rebalance rows of the same run are ok, with 2-4x their old
  durations for the same reason.
- **Known: Tansu does not evict a member that was frozen past its session timeout.** In the
  stall row the clients' request timeouts fire and they reconnect, but no rebalance follows;
  the re-join path is exercised by the broker restart (coordinator lost, member id unknown)
  and by the crash and rebalance rows.
"""


def _previous_lines() -> list[str]:
    """The current document's lines (rows of scenarios not re-run are carried over)."""
    return DOC.read_text().splitlines() if DOC.exists() else []


def write_doc(rows: dict[str, dict]) -> None:
    lines = [
        "# Reliability: faults, load and the books",
        "",
        "Produced by `bench/reliability.py` (scenarios in `testsupport/reliability.py`,",
        "the same code `tests/test_reliability.py` runs with small sizes in CI). Every row is",
        "a real Tansu broker on 127.0.0.1, real `anomaly serve` subprocesses and real signals.",
        "*Records accounted* = input offsets found, by reading the output topics back, as a",
        "score message or a dead letter (never both); each score over its threshold must also",
        "have an alert. *Duplicates* = extra deliveries of an offset (at-least-once replays).",
        "*Max RSS* = the largest resident set of a serve process, sampled every 0.5-3 s.",
        "About 1 % of the input is poison (each kind in turn), so dead-lettering is under test",
        "too.",
        "",
        "Kill kinds (SIGKILL crash runs), judged from the broker after each kill:",
        "`after_commit` = everything delivered was committed (killed before the next batch was",
        "produced); `uncommitted` = outputs delivered past the last commit (between produce and",
        "commit); `rebalance` = killed as soon as it logged that its partitions were being",
        "revoked after a new member joined; `startup` = before it had produced anything.",
        "",
        "| test | runs | faults injected | records in | records accounted | duplicates "
        "| max RSS (MiB) | ok | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    kept = _previous_lines()
    for name in ORDER:
        if name not in rows:
            lines += [line for line in kept if line.startswith(f"| {TITLES[name]} |")]
            continue
        r = rows[name]
        lines.append(
            f"| {r['scenario']} | {r['runs']} | {r['faults']} | {r['records_in']:,} "
            f"| {r['accounted']:,} | {r['duplicates']:,} | {r['max_rss_mb']:.0f} "
            f"| {'yes' if r['ok'] else '**no**'} | {_notes(name, r)} |"
        )
    lines += ["", FINDINGS, "## Commands", ""]
    for name in ORDER:
        if name in rows:
            r = rows[name]
            lines.append(f"- {r['scenario']} ({r['when']}, {r['seconds']:.0f} s): `{r['command']}`")
        else:
            lines += [line for line in kept if line.startswith(f"- {TITLES[name]} (")]
    lines += [
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, a shared 2-core VM;",
        "the broker, the load generator and serve share those cores.",
        "",
        "Full details of each run (kill kinds, duplicates per crash, RSS samples, committed",
        "offsets around the stall, consumption while the output broker was paused) are in",
        "`bench/out/reliability.json` after a run.",
        "",
    ]
    DOC.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=ORDER, default=list(ORDER))
    parser.add_argument("--restart-records", type=int, default=20_000)
    parser.add_argument("--stall-rate", type=float, default=3000.0)
    parser.add_argument("--stall-seconds", type=float, default=10.0)
    parser.add_argument("--crashes", type=int, default=21)
    parser.add_argument("--crash-rate", type=float, default=1500.0)
    parser.add_argument("--eos-crashes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebalance-rate", type=float, default=3000.0)
    parser.add_argument("--backpressure-records", type=int, default=100_000)
    parser.add_argument("--pause-seconds", type=float, default=15.0)
    parser.add_argument("--output-failure-records", type=int, default=20_000)
    parser.add_argument("--output-outage-seconds", type=float, default=8.0)
    parser.add_argument("--soak-records", type=int, default=1_000_000)
    parser.add_argument("--rss-every", type=float, default=3.0)
    parser.add_argument(
        "--doc-only", action="store_true", help="rewrite docs/reliability.md from the JSON"
    )
    args = parser.parse_args()
    if args.doc_only:
        write_doc(json.loads(RESULTS.read_text()))
        return 0
    command = "python bench/reliability.py " + shlex.join(sys.argv[1:])
    workdir = ROOT / "bench" / "out" / "reliability-logs" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True)
    outcomes = run(args.only, args, workdir)
    rows = merge(outcomes, command.strip())
    write_doc(rows)
    print(f"wrote {DOC.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")
    return 0 if all(o.ok for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
