"""The layout's boundaries (DESIGN.md "Layout", STYLE.md principle 1), read with `ast`.

1. `protocol/` is pure: it imports neither `device/` nor `cloud/`, no outside library but its two
   pure ones (cryptography, PyNaCl), and from the standard library only what computes
   (`PROTOCOL_STANDARD_LIBRARY`: no files, sockets, processes, threads or clock).
2. `device/` and `cloud/` never import each other (the kiosk installs without the cloud's packages,
   and the cloud must not grow on the kiosk's code).
3. Every outside library is imported only by its adapter on each side: `ADAPTERS` below is the
   import census, and an entry that no longer imports its library fails too, so the table (and
   docs/development.md, which shows it) stays true.
4. The ports (`PORTS`: cloud/ports.py, device/link.py) import at run time only what declares
   types; their implementations and record types are named under `TYPE_CHECKING`. The shipped
   fakes (`SHIPPED_FAKES`: cloud/ledger_fake.py, device/link.py's FakeLink) import no outside
   library: they run wherever the code they stand in for is tested.

Every import counts: at the top, inside functions, and under `TYPE_CHECKING` (rule 4 alone tells
the imports under `TYPE_CHECKING` apart).

The census (module -> outside library), as `python -m tests.test_architecture` prints it:

    cloud.api (package: the HTTP adapter)   fastapi, starlette, uvicorn, pydantic
    cloud.api.metrics                       prometheus_client  (the API's /metrics)
    cloud.api.stripe_gateway                stripe
    cloud.payouts                           schwifty  (IBAN checks of payouts)
    cloud.payout_export                     sepaxml, text_unidecode, lxml  (SEPA files of payouts)
    cloud.consumer.metrics                  prometheus_client  (the consumer's metrics port)
    cloud.consumer.mqtt_link                paho
    cloud.database                          sqlalchemy, psycopg2, alembic
    cloud.logs                              structlog
    cloud.migrations (package, Alembic's)   alembic, sqlalchemy
    cloud.settings                          pydantic, pydantic_settings
    device.indicators_rpi                   RPi.GPIO (rpi-lgpio on a Pi 5)
    device.logs                             structlog
    device.mqtt_link                        paho
    device.outbox                           sqlite3 (standard library, but an outside thing)
    device.reader_pcsc                      smartcard (pyscard)
    cloud.card_reader                       smartcard (pyscard: `card program`)
    protocol.codec, protocol.jws, protocol.keys, protocol.sun  cryptography (jws also nacl)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("protocol", "device", "cloud")

# What protocol/ may import from the standard library: computation only.
PROTOCOL_STANDARD_LIBRARY: Final = frozenset(
    {
        "__future__",
        "abc",
        "base64",
        "binascii",
        "collections",
        "dataclasses",
        "decimal",
        "enum",
        "functools",
        "hashlib",
        "hmac",
        "itertools",
        "json",
        "math",
        "operator",
        "re",
        "string",
        "types",
        "typing",
        "unicodedata",
        "urllib.parse",
    }
)

# The outside libraries protocol/ may use: pure computation (signatures).
PROTOCOL_LIBRARIES: Final = frozenset({"cryptography", "nacl"})

# The census: each outside library -> the only modules allowed to import it. A name ending in
# ".*" is a package (the package and everything in it). On each side one adapter per library;
# the exceptions are said where they stand.
ADAPTERS: Final[dict[str, frozenset[str]]] = {
    # protocol's own, pure dependencies; both sides use the key types through protocol.keys.
    # (1.1) protocol.sun: AES and AES-CMAC of genuine wristbands (protocol.ntag424 builds on it).
    "cryptography": frozenset({"protocol.codec", "protocol.jws", "protocol.keys", "protocol.sun"}),
    "nacl": frozenset({"protocol.jws"}),
    # MQTT
    "paho": frozenset({"device.mqtt_link", "cloud.consumer.mqtt_link"}),
    # the kiosk's hardware and its disk
    "smartcard": frozenset({"device.reader_pcsc", "cloud.card_reader"}),  # (1.1) card program
    "RPi": frozenset({"device.indicators_rpi"}),  # RPi.GPIO, or rpi-lgpio (same import) on a Pi 5
    "sqlite3": frozenset({"device.outbox"}),
    # logging
    "structlog": frozenset({"device.logs", "cloud.logs"}),
    # PostgreSQL: the engine, the driver, error translation and the migration runner in one
    # module; Alembic loads cloud/migrations/ (env.py, the revisions) itself.
    "sqlalchemy": frozenset({"cloud.database", "cloud.migrations.*"}),
    "psycopg2": frozenset({"cloud.database"}),
    "alembic": frozenset({"cloud.database", "cloud.migrations.*"}),
    # HTTP: the package cloud/api/ is the HTTP adapter (routes, middleware, error handlers and
    # the server are all FastAPI/Starlette/uvicorn; pydantic is FastAPI's model layer).
    "fastapi": frozenset({"cloud.api.*"}),
    "starlette": frozenset({"cloud.api.*"}),
    "uvicorn": frozenset({"cloud.api.*"}),
    "pydantic": frozenset({"cloud.settings", "cloud.api.*"}),
    "pydantic_settings": frozenset({"cloud.settings"}),
    "stripe": frozenset({"cloud.api.stripe_gateway"}),
    # (1.1) payouts: the IBAN checksum (issue 16)
    "schwifty": frozenset({"cloud.payouts"}),
    # (1.1) the SEPA credit-transfer file of payouts, and sepaxml's own transliteration (its
    # dependency) for the names in it (issue 16)
    "sepaxml": frozenset({"cloud.payout_export"}),
    "text_unidecode": frozenset({"cloud.payout_export"}),
    "lxml": frozenset({"cloud.payout_export"}),  # the SEPA file's schema check (libxml2)
    # Prometheus: each of the two cloud processes exposes its own registry its own way (the
    # consumer its own port, the API a route); one module each.
    "prometheus_client": frozenset({"cloud.consumer.metrics", "cloud.api.metrics"}),
}
# Libraries imported by modules of the standard library's name but that are outside things.
OUTSIDE_STANDARD_LIBRARY: Final = frozenset({"sqlite3"})

# Rule 4: the ports, what they may import at run time, and the fakes shipped in the packages.
PORTS: Final = frozenset({"cloud.ports", "device.link"})
PORT_RUNTIME_IMPORTS: Final = frozenset(
    {"__future__", "collections.abc", "dataclasses", "threading", "typing"}
)
SHIPPED_FAKES: Final = frozenset({"cloud.ledger_fake", "device.link"})


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module, e.g. "cloud.deploy"
    name: str  # what it imports, e.g. "paho.mqtt.client"
    line: int
    path: str  # the importing file, relative to the root
    runtime: bool = True  # False: under `if TYPE_CHECKING:`

    @property
    def top(self) -> str:
        return self.name.split(".")[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.name}"


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    module = module_name(root, path)
    relative = str(path.relative_to(root))
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, runtime: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, relative, runtime)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield Import(module, name, node.lineno, relative, runtime)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, False)
            for child in node.orelse:
                yield from visit(child, runtime)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, runtime)

    yield from visit(tree, True)


def all_imports(root: Path = ROOT) -> list[Import]:
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found.extend(imports_of(root, path))
    return found


def allowed(module: str, entries: frozenset[str]) -> bool:
    for entry in entries:
        if entry.endswith(".*"):
            package = entry[:-2]
            if module == package or module.startswith(package + "."):
                return True
        elif module == entry:
            return True
    return False


def is_outside(top: str) -> bool:
    return top not in PACKAGES and (
        top not in sys.stdlib_module_names or top in OUTSIDE_STANDARD_LIBRARY
    )


def violations(imports: list[Import]) -> list[str]:
    """Every broken rule, one line each (empty when the layout holds)."""
    problems: list[str] = []
    for found in imports:
        side = found.module.split(".")[0]
        top = found.top
        if side == "protocol":
            if top in ("device", "cloud"):
                problems.append(f"{found}: protocol/ imports neither device/ nor cloud/")
            elif top in sys.stdlib_module_names and top not in OUTSIDE_STANDARD_LIBRARY:
                name = found.name
                if name not in PROTOCOL_STANDARD_LIBRARY and top not in PROTOCOL_STANDARD_LIBRARY:
                    problems.append(
                        f"{found}: protocol/ is pure (no I/O from the standard library)"
                    )
        elif {side, top} == {"device", "cloud"}:
            problems.append(f"{found}: device/ and cloud/ never import each other")
        if side == "protocol" and is_outside(top) and top not in PROTOCOL_LIBRARIES:
            problems.append(f"{found}: protocol/ imports no I/O library")
        if found.module in PORTS and found.runtime and found.name not in PORT_RUNTIME_IMPORTS:
            problems.append(
                f"{found}: {found.module} is a port: it names {found.name} under TYPE_CHECKING"
            )
        if found.module in SHIPPED_FAKES and is_outside(top):
            problems.append(f"{found}: {found.module} is a shipped fake: no outside library")
        if is_outside(top):
            entries = ADAPTERS.get(top)
            if entries is None:
                problems.append(f"{found}: {top} has no adapter in the census (ADAPTERS)")
            elif not allowed(found.module, entries):
                problems.append(
                    f"{found}: only {', '.join(sorted(entries))} may import {top} (its adapter)"
                )
    return problems


def stale_entries(imports: list[Import]) -> list[str]:
    """Census entries that no longer import their library (the table must stay true)."""
    importers: dict[str, set[str]] = defaultdict(set)
    for found in imports:
        importers[found.top].add(found.module)
    stale: list[str] = []
    for library, entries in ADAPTERS.items():
        for entry in sorted(entries):
            if not any(allowed(module, frozenset({entry})) for module in importers[library]):
                stale.append(f"{entry} is listed for {library} but does not import it")
    return stale


def census(imports: list[Import]) -> dict[str, set[str]]:
    """module -> the outside libraries it imports."""
    table: dict[str, set[str]] = defaultdict(set)
    for found in imports:
        if is_outside(found.top):
            table[found.module].add(found.top)
    return dict(sorted(table.items()))


# --- the real tree ---------------------------------------------------------------------------


def test_the_layout_holds() -> None:
    assert violations(all_imports()) == []


def test_the_census_has_no_stale_entries() -> None:
    assert stale_entries(all_imports()) == []


def test_the_census_is_in_the_development_guide() -> None:
    """docs/development.md shows which module imports which outside library; it stays true."""
    guide = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    for module, libraries in census(all_imports()).items():
        for library in libraries:
            [entry] = [e for e in ADAPTERS[library] if allowed(module, frozenset({e}))]
            path = entry.removesuffix(".*").replace(".", "/")
            assert f"`{path}" in guide, f"docs/development.md does not name {path} for {library}"
            assert library in guide, f"docs/development.md does not name {library}"


# --- the checker fails when it should --------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> list[Import]:
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return all_imports(root)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"protocol/codec.py": "import socket\n"}, "protocol/ is pure"),
        ({"protocol/keys.py": "from pathlib import Path\n"}, "protocol/ is pure"),
        ({"protocol/models.py": "import time\n"}, "protocol/ is pure"),
        ({"protocol/codec.py": "import paho.mqtt.client\n"}, "protocol/ imports no I/O library"),
        ({"protocol/codec.py": "from cloud.ledger import Ledger\n"}, "neither device/ nor cloud/"),
        ({"protocol/jws.py": "from . import keys\nfrom ..device import x\n"}, "neither device/"),
        ({"cloud/consumer/lifecycle.py": "from device.systemd_notify import notify\n"}, "never"),
        ({"device/kiosk.py": "def f():\n    import cloud.logs\n"}, "never import each other"),
        ({"cloud/deploy.py": "import paho.mqtt.client as mqtt\n"}, "may import paho"),
        ({"cloud/api/queries.py": "from sqlalchemy import text\n"}, "may import sqlalchemy"),
        (
            {
                "cloud/api/app.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    import stripe\n"
            },
            "may import stripe",
        ),
        ({"device/kiosk.py": "import requests\n"}, "requests has no adapter"),
        ({"cloud/ledger.py": "import sqlite3\n"}, "may import sqlite3"),
        ({"cloud/ports.py": "from cloud.ledger import Outcome\n"}, "is a port"),
        ({"device/link.py": "import time\n"}, "is a port"),
        (
            {
                "cloud/ports.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\n"
                "else:\n    import cloud.database\n"
            },
            "is a port",
        ),
        ({"cloud/ledger_fake.py": "import paho.mqtt.client\n"}, "is a shipped fake"),
    ],
)
def test_a_broken_boundary_is_found(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = violations(_tree(tmp_path, files))
    assert problems, files
    assert any(expected in problem for problem in problems), problems


def test_adapters_and_pure_imports_pass(tmp_path: Path) -> None:
    imports = _tree(
        tmp_path,
        {
            "protocol/jws.py": "import json\nimport nacl.bindings\nfrom urllib.parse import q\n",
            "device/mqtt_link.py": "import paho.mqtt.client\nfrom protocol.topics import x\n",
            "cloud/api/pos.py": "from starlette.requests import Request\n",
            "cloud/migrations/versions/r0001.py": "from alembic import op\n",
            "cloud/ledger.py": "from cloud.database import text\n",
            "cloud/ports.py": "from typing import TYPE_CHECKING, Protocol\nif TYPE_CHECKING:\n"
            "    from cloud.database import Engine\n    import cloud.ledger\n",
            "cloud/ledger_fake.py": "import threading\nfrom cloud.ledger_records import Outcome\n",
        },
    )
    assert violations(imports) == []
    assert stale_entries(imports)  # most adapters are missing from this small tree


def test_shipped_fakes_load_without_database_or_mqtt_libraries() -> None:
    """What the rule checks statically, at run time: importing the fakes (and the ports and
    records they build) loads neither SQLAlchemy, psycopg2 nor paho, also not through an import
    of another of our modules."""
    code = (
        "import sys, cloud.ledger_fake, cloud.ports, cloud.ledger_records, device.link\n"
        "print(sorted(m for m in ('sqlalchemy', 'psycopg2', 'paho') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout


if __name__ == "__main__":  # print the census
    for module, libraries in census(all_imports()).items():
        print(f"{module:40} {', '.join(sorted(libraries))}")
