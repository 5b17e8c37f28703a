"""Hiding the passwords of URLs (MQTT_URL, DATABASE_URL) in any text before it is shown or logged.

One function for every message: settings errors, start-up errors and every log line (both log
formatters run their output through it). Pure text in, text out: it knows nothing of where the
text goes. It errs on the side of hiding too much: everything between ``scheme://user:`` and the
last ``@`` of the same word is replaced, so a password holding ``@``, ``/`` or ``#`` is hidden
whole even when the URL is malformed.
"""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"

# scheme://user:password@  (password: anything but white space and quotes, up to the last @).
_USERINFO_PATTERN: Final = re.compile(
    r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)(?P<password>[^\s'\"]*)@"
)
# scheme://user:password with no @host at all (a typo): urllib would read the password as the
# port. Whatever follows "user:" and is not a port number is hidden.
_DANGLING_PASSWORD_PATTERN: Final = re.compile(
    r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"\[\]]+:)"
    r"(?!\d*(?:[/?#\s'\"]|$))(?!\*\*\*@)[^\s'\"@]*(?=[\s'\"]|$)"
)
# libpq keywords and query parameters: password=secret (postgresql://host/db?password=secret).
_PASSWORD_PARAMETER_PATTERN: Final = re.compile(
    r"(?P<prefix>(?:^|[?&;\s])(?:password|passwd|pwd)=)(?P<password>[^&;\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (user:***@host)."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO_PATTERN.sub(lambda match: f"{match['prefix']}{MASK}@", text)
    text = _DANGLING_PASSWORD_PATTERN.sub(lambda match: f"{match['prefix']}{MASK}", text)
    return _PASSWORD_PARAMETER_PATTERN.sub(lambda match: f"{match['prefix']}{MASK}", text)


CARD_UID_VISIBLE_DIGITS: Final = 4


def mask_card_uid(card_uid: str | None) -> str | None:
    """``04A1B2C3D4E5F6`` -> ``****E5F6``: what a screen may show of a wristband's UID.

    A bystander who reads a screen must not be able to copy a UID (with ``uid`` card auth a UID
    is all a clone needs); the last four hex digits let staff tell two bands apart. Always four
    asterisks, so the screen does not tell the UID's length either.
    """
    if card_uid is None:
        return None
    return "****" + card_uid[-CARD_UID_VISIBLE_DIGITS:]
