"""What the API's two HTML pages (the dashboard, the top-up form) have in common: where their
files are, and the headers every page carries besides its own Content-Security-Policy."""

from __future__ import annotations

from pathlib import Path
from typing import Final

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"


def page_headers(content_security_policy: str) -> dict[str, str]:
    """A page's headers: its CSP, no MIME sniffing, no referrer, never cached."""
    return {
        "Content-Security-Policy": content_security_policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
