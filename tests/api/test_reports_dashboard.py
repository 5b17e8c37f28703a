"""The dashboard's own files (issue 13 section 4): uPlot vendored into the package with its
licence and recorded version, shipped as package data, served by the API; the page loads
nothing from elsewhere and hard-codes no currency. The page itself runs in Chromium in
test_dashboard_browser.py."""

from __future__ import annotations

import glob
import hashlib
import re
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "cloud" / "static"
UPLOT = STATIC / "vendor" / "uplot"
UPLOT_FILES = ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE")


def test_uplot_is_vendored_with_its_licence_version_and_hashes() -> None:
    readme = (UPLOT / "README.md").read_text()
    recorded = re.search(r"version \*\*(\d+\.\d+\.\d+)\*\*", readme)
    assert recorded, "the README records the version"
    header = (UPLOT / "uPlot.iife.min.js").read_text()[:200]
    assert f"(v{recorded[1]})" in header  # the file is the version the README says
    assert f"uplot-{recorded[1]}.tgz" in readme and "registry.npmjs.org" in readme
    for name in UPLOT_FILES:
        digest = hashlib.sha256((UPLOT / name).read_bytes()).hexdigest()
        assert f"`{name}`" in readme and digest in readme, f"{name}: hash not in the README"
    assert "MIT License" in (UPLOT / "LICENSE").read_text()


def test_package_data_ships_every_static_file() -> None:
    """setuptools' rule (build_py.find_data_files): each package-data pattern is a glob relative
    to the package's folder and keeps files only, so `static/*` alone would leave vendor/ out."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cloud"]
    shipped = {
        Path(path)
        for pattern in patterns
        for path in glob.glob(str(REPO / "cloud" / pattern))
        if Path(path).is_file()
    }
    every_static_file = {path for path in STATIC.rglob("*") if path.is_file()}
    assert {UPLOT / name for name in UPLOT_FILES} <= every_static_file
    assert every_static_file - shipped == set()


def test_the_page_loads_only_its_own_files_and_names_no_currency() -> None:
    page = (STATIC / "dashboard.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert "/static/vendor/uplot/uPlot.iife.min.js" in sources
    assert "/static/vendor/uplot/uPlot.min.css" in sources
    assert all(source.startswith("/static/") for source in sources), sources
    for name in ("dashboard.html", "dashboard.js", "festival.css"):
        text = (STATIC / name).read_text()
        assert "€" not in text and "EUR" not in text, f"{name} hard-codes a currency"
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_the_api_serves_the_vendored_files(client: TestClient) -> None:
    script = client.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert script.content == (UPLOT / "uPlot.iife.min.js").read_bytes()
    style = client.get("/static/vendor/uplot/uPlot.min.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    page = client.get("/dashboard")
    assert "script-src 'self'" in page.headers["content-security-policy"]
