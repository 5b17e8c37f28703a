"""`festival-demo`: the whole system on one machine (what `./run demo` runs).

Starts embedded PostgreSQL and Mosquitto as children of this process and stops them on Ctrl-C
or after --duration seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from cloud.sandbox import MosquittoBroker, PostgresServer

DEMO_ROOT = Path(os.environ.get("FESTIVAL_DEMO_DIR", Path.cwd() / "var" / "demo"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="festival-demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    parser.add_argument("--kiosks", type=int, default=4)
    parser.add_argument("--cards", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0, help="orders per second")
    parser.add_argument("--fresh", action="store_true", help="start from an empty database")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.environ.get("XDG_RUNTIME_DIR"):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="festival-xdg-")
    DEMO_ROOT.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    postgres = PostgresServer(DEMO_ROOT / "postgres")
    broker = MosquittoBroker(DEMO_ROOT / "mosquitto")
    broker.add_user("cloud-consumer", role="cloud")
    try:
        postgres.start()
        print(f"PostgreSQL  {postgres.url()}  (data in {postgres.data_dir})", flush=True)
        broker.start()
        print(f"Mosquitto   mqtt://127.0.0.1:{broker.port}  (config {broker.config_file})")
        print("Press Ctrl-C to stop.", flush=True)
        try:
            stop.wait(args.duration)
        except KeyboardInterrupt:
            pass
    finally:
        broker.stop()
        postgres.stop()
        print("stopped everything this demo started", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
