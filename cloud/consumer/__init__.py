"""The cloud MQTT consumer: verify each kiosk request, apply it exactly once, answer it signed.

`run_from_cli` is the entry point of `festival-cloud consumer`; docs/consumer.md explains the
flow, batching, acknowledgement discipline and behaviour under faults.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.settings import CloudSettings


def run_from_cli(args: argparse.Namespace, settings: CloudSettings) -> int:
    # Imported on use: importing the package must stay cheap and free of side effects.
    from cloud.consumer.main import run

    return run(settings)
