"""Headless Chromium for page tests: Debian's `chromium` and `chromium-driver` (`.ci/run`
installs them; nothing is downloaded at test time), driven by Selenium.

`browser()` yields a WebDriver, or skips the test naming what is missing; with
R1VFLOW_REQUIRE_BROWSER=1 (what `.ci/run` sets) it fails instead."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def _missing() -> str | None:
    if not any(shutil.which(name) for name in CHROMIUM):
        return "no chromium on PATH (apt-get install chromium chromium-driver)"
    if not shutil.which(DRIVER):
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make install: it is a dev dependency)"
    return None


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 1800) -> Iterator:
    reason = _missing()
    if reason and os.environ.get("R1VFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"R1VFLOW_REQUIRE_BROWSER=1 but {reason}")
    if reason:
        pytest.skip(f"headless browser tests need Chromium: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(n) for n in CHROMIUM if shutil.which(n))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def images_loaded(driver) -> list[dict]:
    """Every <img> of the page: its alt text, whether it finished loading, its natural width."""
    return driver.execute_script(
        "return Array.from(document.images).map(i => "
        "({alt: i.alt, complete: i.complete, width: i.naturalWidth}));")


def page_metrics(driver) -> dict[str, str]:
    """data-metric attribute -> the element's text, for every element that has one."""
    return driver.execute_script(
        "const out = {}; document.querySelectorAll('[data-metric]').forEach("
        "e => { out[e.dataset.metric] = e.textContent; }); return out;")
