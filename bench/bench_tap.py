"""A tap's card read through real pcscd: a genuine band (UID + its SUN message) vs a UID-only card.

    .venv/bin/python bench/bench_tap.py [--taps 100] [--out bench/results/tap.json]

Starts its own pcscd with the vpcd driver (device/sandbox.py; no other pcscd may run), programs
a factory-fresh virtual NTAG 424 DNA with `festival-cloud card program` exactly as the operator
does, then taps that band and a UID-only card alternately (genuine, plain, genuine, ...: drift
hits both alike) on the kiosk's own `PcscReader`. Per tap it times the reader's read, in the
reader's thread, with a monotonic clock: connect, GET UID, and for the genuine band the NDEF read
(SELECT application, SELECT file, READ BINARY), disconnect. That is the part of a tap that
`FESTIVAL_CARD_AUTH=sun` adds to; the kiosk's own processing after it (signing, the outbox) is
bench/bench_kiosk.py's. Every genuine read's message is verified with the master key (a read
that timed something else would fail), and its counter must go up by one per tap.

vpcd carries APDUs over a loopback socket, so these figures are the kiosk's software path (pyscard,
pcscd, the driver) with a card that answers at once; a real reader adds the radio time of each
APDU (docs/benchmarks.md gives the estimate). Writes bench/results/tap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud.keys import generate_card_master_key, save_card_master_key  # noqa: E402
from device.reader import CardRemoved, ReaderEvent, ReaderStatus, ScanEvent  # noqa: E402
from device.reader_pcsc import PcscReader  # noqa: E402
from device.sandbox import PcscdService  # noqa: E402
from device.virtual_card import VirtualCard  # noqa: E402
from device.virtual_ntag424 import VirtualNtag424  # noqa: E402
from protocol.sun import SunVerifier  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tap.json"
GENUINE_UID = "04A1B2C3D4E5F6"
PLAIN_UID = "04B2C3D4E5F607"
READER = "00 00"
EVENT_TIMEOUT_S = 10.0


class Events:
    def __init__(self) -> None:
        self.queue: queue.Queue[ReaderEvent] = queue.Queue()

    def __call__(self, event: ReaderEvent) -> None:
        self.queue.put(event)

    def next(self, kind: type) -> ReaderEvent:
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            event = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(event, kind):
                return event


def _timed_reads(reader: PcscReader, durations: list[float]) -> None:
    """Wrap the reader's one read (connect … disconnect) so each call's duration is kept."""
    read: Callable[..., ScanEvent] = reader._read  # the part of a tap the card is read in

    def timed(*args: Any) -> ScanEvent:
        started = time.perf_counter()
        try:
            return read(*args)
        finally:
            durations.append(time.perf_counter() - started)

    reader._read = timed  # type: ignore[method-assign,assignment]


def _program(master_key_file: Path, tag: VirtualNtag424) -> None:
    with VirtualCard(tag=tag):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cloud.cli",
                "card",
                "program",
                "--reader",
                READER,
                "--count",
                "1",
            ],
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(REPO),
                "CARD_MASTER_KEY_FILE": str(master_key_file),
                "FESTIVAL_PORTAL_URL": "https://pay.festival.example",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if done.returncode != 0 or done.stdout.strip() != f"{tag.uid.hex().upper()}\tprogrammed":
        raise SystemExit(f"card program failed: {done.stdout!r} {done.stderr!r}")


def _summary(values_s: list[float]) -> dict[str, float]:
    ms = sorted(value * 1000 for value in values_s)
    quantiles = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "p50": round(statistics.median(ms), 3),
        "p90": round(quantiles[89], 3),
        "p99": round(quantiles[98], 3),
        "max": round(ms[-1], 3),
        "mean": round(statistics.mean(ms), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=100, help="taps of each card")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="festival-bench-tap-"))
    pcscd = PcscdService(root / "pcscd")
    pcscd.start()
    try:
        master_key = generate_card_master_key()
        save_card_master_key(master_key, root / "master.key")
        tag = VirtualNtag424(bytes.fromhex(GENUINE_UID))
        _program(root / "master.key", tag)
        verifier = SunVerifier(master_key)
        events = Events()
        reader = PcscReader(READER, poll_ms=100)
        durations: list[float] = []
        _timed_reads(reader, durations)
        reader.start(events)
        status = events.next(ReaderStatus)
        assert isinstance(status, ReaderStatus) and status.available, status
        reads: dict[str, list[float]] = {"sun": [], "uid": []}
        counters: list[int] = []
        try:
            for _ in range(args.taps):
                for kind in ("sun", "uid"):
                    card = VirtualCard(tag=tag) if kind == "sun" else VirtualCard(PLAIN_UID)
                    before = len(durations)
                    with card:
                        scan = events.next(ScanEvent)
                        assert isinstance(scan, ScanEvent) and scan.status == "ok", scan
                        if kind == "sun":
                            assert scan.card_sun is not None, "a genuine band gave no message"
                            sun = scan.card_sun
                            counters.append(
                                verifier.verify(GENUINE_UID, sun.picc_data, sun.cmac).counter
                            )
                        else:
                            assert scan.card_sun is None
                    events.next(CardRemoved)
                    assert len(durations) == before + 1, "one read per tap"
                    reads[kind].append(durations[-1])
        finally:
            reader.stop()
        assert counters == list(range(counters[0], counters[0] + len(counters))), counters
        summary = {kind: _summary(values) for kind, values in reads.items()}
        added_ms = round(summary["sun"]["p50"] - summary["uid"]["p50"], 3)
        report: dict[str, Any] = {
            "benchmark": "a tap's card read through pcscd + vpcd: genuine band vs UID-only card",
            "command": "python bench/bench_tap.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "taps_each": args.taps,
            "apdus": {"uid": 1, "sun": 4},
            "read_ms": summary,
            "sun_adds_ms_p50": added_ms,
            "sun_to_uid_ratio_p50": round(summary["sun"]["p50"] / summary["uid"]["p50"], 2),
            "load_average_after": os.getloadavg(),
        }
        for kind in ("uid", "sun"):
            row = summary[kind]
            print(
                f"{kind:>3}: read p50 {row['p50']:.2f} ms, p90 {row['p90']:.2f} ms,"
                f" p99 {row['p99']:.2f} ms, max {row['max']:.2f} ms ({args.taps} taps)"
            )
        print(
            f"the SUN message adds {added_ms:.2f} ms at the median"
            f" (sun / uid = {report['sun_to_uid_ratio_p50']}); load {os.getloadavg()}"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    finally:
        pcscd.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
