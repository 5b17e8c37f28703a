"""Micro-benchmark of protocol v1 on one core: sign, verify, and full decode of a bar order.

    .venv/bin/python bench/bench_protocol.py            # ~2 s per operation, writes results
    .venv/bin/python bench/bench_protocol.py --seconds 0.2 --no-write

"full decode" is what the cloud consumer does per message: authenticate (size, structure,
header, kid, key lookup, Ed25519 verification, strict JSON, kiosk_id) then parse_authenticated
(schema, totals, staleness). The process is pinned to one CPU so the figures are per core.
Results go to bench/results/protocol.json (overwritten) and are recorded by hand in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.codec import authenticate, encode_request, parse_authenticated
from protocol.jws import parse_compact, verify
from protocol.keys import generate_private_key
from protocol.models import BarItem, BarOrder

RESULTS_PATH: Final = Path(__file__).resolve().parent / "results" / "protocol.json"
TARGET_DECODES_PER_S: Final = 10_000
KIOSK_ID: Final = "bar-01"
CREATED_AT_MS: Final = 1_750_000_000_000


def realistic_order() -> BarOrder:
    """Two beers, two cup deposits, one cup returned: a typical bar tap."""
    items = (
        BarItem("Pils 0,5 l", 2, 450, sku="BEER-05"),
        BarItem("Cup deposit", 2, 200, is_deposit=True),
        BarItem("Cup return", 1, 200, is_deposit=True, is_return=True),
    )
    return BarOrder(
        request_id="018f3b2a-7c4e-7def-8a12-3456789abcde",
        kiosk_id=KIOSK_ID,
        seq=4711,
        created_at_ms=CREATED_AT_MS,
        card_uid="04A1B2C3D4E5F6",
        currency="EUR",
        items=items,
        total_cents=sum(item.signed_cents for item in items),
        staff_id="anna",
    )


def operations_per_second(operation: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Run ``operation`` in batches for about ``seconds``; return (ops/s, ops run)."""
    operation()  # warm caches (header memo, imports) outside the measurement
    count = 0
    batch = 100
    started = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        for _ in range(batch):
            operation()
        count += batch
        elapsed = time.perf_counter() - started
    return count / elapsed, count


def pin_to_one_cpu() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per operation")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    arguments = parser.parse_args(argv)

    pinning = pin_to_one_cpu()
    private_key = generate_private_key()
    public_keys: dict[str, Ed25519PublicKey] = {KIOSK_ID: private_key.public_key()}
    order = realistic_order()
    raw = encode_request(order, private_key)
    now_ms = CREATED_AT_MS + 1_500

    def sign() -> object:
        return encode_request(order, private_key)

    def verify_only() -> object:
        verify(parse_compact(raw), public_keys[KIOSK_ID])
        return None

    def full_decode() -> object:
        message = authenticate(raw, topic_kiosk_id=KIOSK_ID, public_key_for=public_keys.get)
        return parse_authenticated(message, currency="EUR", now_ms=now_ms)

    assert full_decode() == order
    figures: dict[str, dict[str, float | int]] = {}
    for name, operation in (
        ("sign", sign),
        ("verify", verify_only),
        ("full_decode", full_decode),
    ):
        rate, count = operations_per_second(operation, arguments.seconds)
        figures[name] = {"ops_per_s": round(rate), "ops": count, "us_per_op": round(1e6 / rate, 1)}
        print(f"{name:12s} {rate:10,.0f} ops/s  ({1e6 / rate:6.1f} us/op, {count} ops)")

    decode_rate = figures["full_decode"]["ops_per_s"]
    meets_target = decode_rate >= TARGET_DECODES_PER_S
    print(
        f"target full decode >= {TARGET_DECODES_PER_S:,}/s: {'met' if meets_target else 'MISSED'}"
        f" ({pinning}; message {len(raw)} bytes)"
    )
    if not arguments.no_write:
        results = {
            "benchmark": "protocol",
            "command": ".venv/bin/python bench/bench_protocol.py",
            "seconds_per_operation": arguments.seconds,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpu": cpu_model(),
                "cpus_online": os.cpu_count(),
                "os": os_name(),
                "python": sys.version.split()[0],
                "pinning": pinning,
            },
            "message_bytes": len(raw),
            "results": figures,
            "target_full_decode_per_s": TARGET_DECODES_PER_S,
            "target_met": meets_target,
        }
        RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS_PATH}")
    return 0 if meets_target else 1


if __name__ == "__main__":
    sys.exit(main())
