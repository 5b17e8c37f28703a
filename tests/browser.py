"""Headless Chromium (Debian's chromium + chromium-driver) for page tests, with screenshots.

Screenshots land in `var/screenshots/` (or $FESTIVAL_SCREENSHOT_DIR) so a CI run keeps them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

SCREENSHOT_DIR = Path(
    os.environ.get(
        "FESTIVAL_SCREENSHOT_DIR", Path(__file__).resolve().parent.parent / "var" / "screenshots"
    )
)


def _program(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: apt-get install -y {package}")
    return path


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="festival-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium", "chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=_program("chromedriver", "chromium-driver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def save_screenshot(driver: webdriver.Chrome, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {name} not written"
    return path


def attribute_now(driver: webdriver.Chrome, css: str, name: str) -> str | None:
    """The attribute of the element matching css as the page is now; None while there is none.

    For wait_until: a page that re-renders (the dashboard redraws its tables on every poll)
    replaces an element between finding it and reading it, which is "not yet", not a failure.
    """
    try:
        return driver.find_element(By.CSS_SELECTOR, css).get_attribute(name)
    except (NoSuchElementException, StaleElementReferenceException):
        return None
