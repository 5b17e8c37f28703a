"""Micro-benchmark of SUN verification (genuine wristbands, 1.1) on one core.

    .venv/bin/python bench/bench_sun.py            # ~2 s per operation, writes results
    .venv/bin/python bench/bench_sun.py --seconds 0.2 --no-write

"verify" is what the cloud does per bar order, top-up or swap in `sun` mode before the counter
rule: check the form, decrypt picc_data under K_meta, compare the UID, derive K_file(uid) and the
SDM session key, CMAC and compare (``protocol.sun.SunVerifier.verify``). Each message is a
different wristband (a fresh UID and counter), so no per-card cache helps. The target is
DESIGN.md's: at most 50 µs per request on one core, judged on CPU time (see ``measure``).
"verify, bad MAC" is the same work on a forged message. "verifier construction" is once per
consumer process.
Results go to bench/results/sun.json (overwritten) and are recorded by hand in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

# bench/ is the script's folder, so its sibling is importable: one timing loop for all benches.
from bench_protocol import cpu_model, os_name, pin_to_one_cpu

from protocol.sun import CardKeyDerivation, SunVerifier, sun_message

RESULTS_PATH: Final = Path(__file__).resolve().parent / "results" / "sun.json"
TARGET_US_PER_VERIFY: Final = 50.0
MASTER: Final = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
WRISTBANDS: Final = 4096


def measure(operation: Callable[[], object], seconds: float) -> dict[str, float | int]:
    """Run ``operation`` in batches for about ``seconds`` of this process's CPU time.

    The figure that counts is CPU time per operation: on a shared machine (the other CPU's
    tests, other processes on ours) wall time also counts the time our pinned process waited
    for its CPU, which is not what a verification costs. Both are reported."""
    operation()
    count = 0
    batch = 200
    wall_started = time.perf_counter()
    cpu_started = time.process_time()
    cpu = 0.0
    while cpu < seconds:
        for _ in range(batch):
            operation()
        count += batch
        cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    return {
        "ops": count,
        "cpu_us_per_op": round(cpu / count * 1e6, 1),
        "wall_us_per_op": round(wall / count * 1e6, 1),
        "ops_per_cpu_s": round(count / cpu),
    }


def messages() -> list[tuple[str, str, str]]:
    """(card_uid, picc_data, cmac) of WRISTBANDS different genuine bands."""
    derive = CardKeyDerivation(MASTER)
    found = []
    for number in range(WRISTBANDS):
        uid = bytes.fromhex("04") + number.to_bytes(6, "big")
        message = sun_message(derive.meta_key, derive.file_key(uid), uid, 1000 + number)
        found.append((uid.hex().upper(), message.picc_data, message.cmac))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per operation")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    arguments = parser.parse_args(argv)

    pinning = pin_to_one_cpu()
    verifier = SunVerifier(MASTER)
    genuine = messages()
    forged = [(uid, picc, "0" * 16) for uid, picc, _ in genuine]
    genuine_cycle = itertools.cycle(genuine)
    forged_cycle = itertools.cycle(forged)

    def verify() -> object:
        return verifier.verify(*next(genuine_cycle))

    def verify_bad_mac() -> object:
        try:
            verifier.verify(*next(forged_cycle))
        except Exception as error:
            return error
        raise AssertionError("a forged message verified")

    def construct() -> object:
        return SunVerifier(MASTER)

    figures: dict[str, dict[str, float | int]] = {}
    for name, operation in (
        ("verify", verify),
        ("verify_bad_mac", verify_bad_mac),
        ("verifier_construction", construct),
    ):
        figure = measure(operation, arguments.seconds)
        figures[name] = figure
        print(
            f"{name:22s} {figure['cpu_us_per_op']:7.1f} us CPU/op"
            f"  ({figure['ops_per_cpu_s']:,} per CPU second; wall {figure['wall_us_per_op']} us/op,"
            f" {figure['ops']} ops)"
        )

    us_per_verify = float(figures["verify"]["cpu_us_per_op"])
    meets_target = us_per_verify <= TARGET_US_PER_VERIFY
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(
        f"target verify <= {TARGET_US_PER_VERIFY:.0f} us: {'met' if meets_target else 'MISSED'}"
        f" ({pinning}; load average {load[0]:.2f})"
    )
    if not arguments.no_write:
        results = {
            "benchmark": "sun",
            "command": ".venv/bin/python bench/bench_sun.py",
            "seconds_per_operation": arguments.seconds,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu": cpu_model(),
                "cpus_online": os.cpu_count(),
                "os": os_name(),
                "python": sys.version.split()[0],
                "pinning": pinning,
                "load_average_1m": round(load[0], 2),
            },
            "wristbands": WRISTBANDS,
            "results": figures,
            "target_us_per_verify": TARGET_US_PER_VERIFY,
            "target_met": meets_target,
        }
        RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS_PATH}")
    return 0 if meets_target else 1


if __name__ == "__main__":
    sys.exit(main())
