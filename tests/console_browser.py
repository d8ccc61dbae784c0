"""Headless Chromium from Debian's packages, driven by Selenium, for the
console's browser test. Never downloads a browser or a driver: both must be
where `scripts/install-chromium.sh` put them (or KAMIWAZA_CHROMIUM_BIN /
KAMIWAZA_CHROMEDRIVER_BIN)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("KAMIWAZA_CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KAMIWAZA_CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1600",
)


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium with its own profile directory."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise RuntimeError(
                f"{path} is missing: run scripts/install-chromium.sh (make test does)"
            )
    # Selenium Manager is never needed with both paths given; keep it offline regardless.
    os.environ.setdefault("SE_OFFLINE", "true")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    with tempfile.TemporaryDirectory(prefix="kamiwaza-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


class Page:
    """The console page in a browser, with waits on what the page shows."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        self.url = url

    def wait(self, condition: Callable[[webdriver.Chrome], Any], timeout: float = 15.0) -> Any:
        return WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition)

    def by_testid(self, testid: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def text(self, testid: str) -> str:
        """What an element shows, read in one script call (the page may re-render
        it between two WebDriver calls)."""
        return str(
            self.driver.execute_script(
                'const e = document.querySelector(`[data-testid="${arguments[0]}"]`);'
                "return e ? e.innerText.trim() : null",
                testid,
            )
        )

    def sign_in(self, key: str) -> None:
        self.driver.get(self.url)
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(self.url)
        field = self.driver.find_element(By.ID, "key")
        field.clear()
        field.send_keys(key)
        self.driver.find_element(By.ID, "signin-button").click()

    def tab(self, name: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, f'.tabs [data-tab="{name}"]').click()

    def table(
        self, testid: str, attribute: str | None = None
    ) -> dict[str, list[str]] | list[list[str]]:
        """A table's body cells (as the page shows them), read in one go: keyed by
        a row attribute, or as a list of rows."""
        rows = self.driver.execute_script(
            "const [testid, attribute] = arguments;"
            'return [...document.querySelector(`[data-testid="${testid}"]`)'
            ".querySelectorAll('tbody tr')].map(row => ["
            "  attribute ? row.getAttribute(attribute) : null,"
            "  [...row.querySelectorAll('td')].map(td => td.innerText.trim())])",
            testid,
            attribute,
        )
        if attribute is None:
            return [cells for _, cells in rows]
        return {key: cells for key, cells in rows if key}
