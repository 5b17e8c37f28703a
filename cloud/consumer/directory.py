"""Kiosk records for one batch, with parsed public keys cached.

The records (enabled, role, key, checkpoint) of the kiosks a batch names are read from the
database, in one query however many it names, for every batch (and every part of one the worker
prepares), after its messages arrived, so `festival-cloud kiosk disable` is effective for every
request received after it returned (PROTOCOL.md) and a re-registered key or checkpoint is used at
once.
Only the parsing of the base64url key into a key object is cached, keyed by the key text itself,
so the cache can never answer with a stale key.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from cloud.consumer.decisions import KioskView
from cloud.consumer.limits import PARSED_KEYS_MAX
from protocol.keys import Ed25519PublicKey, load_public_key_b64


class KioskRecordLike(Protocol):
    @property
    def kiosk_id(self) -> str: ...
    @property
    def public_key_b64(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def checkpoint_id(self) -> str | None: ...


class KioskSource(Protocol):
    def kiosks_named(self, kiosk_ids: Collection[str]) -> Collection[KioskRecordLike]: ...


class KioskDirectory:
    def __init__(self, source: KioskSource) -> None:
        self._source = source
        self._keys: dict[str, Ed25519PublicKey | None] = {}

    def views(self, kiosk_ids: Collection[str]) -> dict[str, KioskView]:
        """The registered kiosks among ``kiosk_ids`` (read now from the database)."""
        if not kiosk_ids:
            return {}
        views: dict[str, KioskView] = {}
        for record in self._source.kiosks_named(kiosk_ids):
            key = self._key(record.public_key_b64)
            if key is not None:
                views[record.kiosk_id] = KioskView(
                    key, bool(record.enabled), str(record.role), record.checkpoint_id
                )
        return views

    def _key(self, public_key_b64: str) -> Ed25519PublicKey | None:
        try:
            return self._keys[public_key_b64]
        except KeyError:
            pass
        if len(self._keys) >= PARSED_KEYS_MAX:
            self._keys.clear()
        try:
            key: Ed25519PublicKey | None = load_public_key_b64(public_key_b64)
        except ValueError:
            key = None  # a corrupt registration authenticates nothing: UNKNOWN_KIOSK
        self._keys[public_key_b64] = key
        return key
