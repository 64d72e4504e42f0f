"""A headless Chromium driven by Playwright, for browser tests of the dashboard.

Playwright's wheel brings its driver but no browser (``playwright install`` is never run): it drives
Debian's Chromium (``make system-deps`` installs it; see devstack/bootstrap.py ``chromium``). A missing
Chromium fails the test with a message saying how to install it; it is never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Page, ViewportSize, sync_playwright

from devstack.bootstrap import find_chromium

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}


def chromium_executable() -> Path:
    found = find_chromium()
    if found is None:
        pytest.fail(
            "Debian's chromium is not installed, and the dashboard's browser test needs it: run `make system-deps` "
            "(or, as root, `apt-get install chromium fonts-liberation`); Playwright's browser download is not used.",
            pytrace=False,
        )
    return found


@dataclass
class BrowserSession:
    """One browser profile; every page opened through it records console errors and uncaught exceptions."""

    context: BrowserContext
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def new_page(self) -> Page:
        page = self.context.new_page()
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.console_errors.append(f"uncaught: {error}"))
        page.on("dialog", self._on_dialog)
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location
            where = f" ({location.get('url', '')}:{location.get('lineNumber', '')})" if location else ""
            self.console_errors.append(f"{message.text}{where}")

    def _on_dialog(self, dialog: Dialog) -> None:
        """Confirmations (delete, cancel, purge) are accepted; the question is kept for assertions."""
        self.dialogs.append(dialog.message)
        dialog.accept()

    def assert_no_console_errors(self) -> None:
        errors, self.console_errors[:] = list(self.console_errors), []
        assert not errors, "the page logged errors to the console:\n" + "\n".join(errors)


@contextmanager
def chromium_session(profile_dir: Path) -> Iterator[BrowserSession]:
    """Headless Chromium with a fresh user-data-dir (``profile_dir`` must not exist yet)."""
    executable = chromium_executable()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=str(executable),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,
            locale="en-GB",
            timezone_id="UTC",
        )
        try:
            for page in context.pages:  # the blank start page of a persistent context
                page.close()
            yield BrowserSession(context)
        finally:
            context.close()
