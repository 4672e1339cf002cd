"""Debian's Chromium driven by Playwright, for the UI tests (never `playwright install`).

A browser that cannot start fails the test, in CI and elsewhere: `make test` installs it
(scripts/setup.sh), so a missing one is a broken install, not a reason to skip.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Error, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
ROOT = Path(__file__).resolve().parent.parent
# Screenshots kept by the tests (the README shows copies of them).
ARTIFACTS = Path(os.environ.get("LANNER_ARTIFACTS", ROOT / "artifacts")) / "ui"
VIEWPORT = {"width": 1440, "height": 900}


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs it (scripts/setup.sh)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Error as exc:
            pytest.fail(f"cannot start Chromium ({CHROMIUM}): {exc}")
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watch:
    """What a page did that a test must see: JavaScript errors, dialogs (alert()...), CSP
    violations reported to the console."""

    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)
        page.on("dialog", self._dialog)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def timed(label: str, start: float) -> float:
    """Logged for the test report (`pytest -s` or the captured output of a failure)."""
    ms = (time.monotonic() - start) * 1000
    print(f"{label}: {ms:.0f} ms")
    return ms
