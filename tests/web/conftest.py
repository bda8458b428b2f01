"""Browser tests: Debian's Chromium (``/usr/bin/chromium``, which ``.ci/run`` installs) driven by Playwright,
headless; never Playwright's own browser download. Outside CI a missing Chromium skips them; with CI=true it
fails them. Screenshots go to the test's ``tmp_path``, and are copied to ``$SEHAT_TEST_ARTIFACTS`` when set."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import _unavailable
from tests.queue.conftest import clock  # noqa: F401 - the queue tests' clock, for the lobby board's page

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root needs --no-sandbox; the rest keep Chromium from calling out of this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 720}
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@dataclass
class Screen:
    """One browser page, with every console error and uncaught exception it produced."""

    page: Page
    artifacts: Path
    errors: list[str] = field(default_factory=list)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _page_error(self, error: Exception) -> None:
        self.errors.append(f"pageerror: {error}")

    async def screenshot(self, name: str, *, docs: str | None = None) -> Path:
        """The whole page as ``name``.png among the test's artifacts; with SEHAT_UPDATE_SCREENSHOTS=1 also as
        ``docs/images/<docs>`` (the README's pictures)."""
        path = self.artifacts / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        _publish(path, self.artifacts.name, docs)
        return path


def _publish(path: Path, test_name: str, docs: str | None) -> None:
    shared = os.environ.get("SEHAT_TEST_ARTIFACTS")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(shared) / f"{test_name}-{path.name}")
    if docs is not None and os.environ.get("SEHAT_UPDATE_SCREENSHOTS", "").lower() in {"1", "true", "yes"}:
        shutil.copyfile(path, DOCS_IMAGES / docs)


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        _unavailable(f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def open_screen(
    browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[..., AbstractAsyncContextManager[Screen]]:
    """``async with open_screen(**context_options) as screen``: a fresh browser context (its own storage) and
    page at 1280x720, closed on leaving, so that a server stopped after it sees its sockets go first."""
    artifacts = tmp_path / re.sub(r"[^\w.-]+", "_", request.node.name)
    artifacts.mkdir()

    @asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[Screen]:
        context = await browser.new_context(viewport=VIEWPORT, **options)  # type: ignore[arg-type]
        try:
            page = await context.new_page()
            screen = Screen(page, artifacts)
            page.on("console", screen._console)
            page.on("pageerror", screen._page_error)
            yield screen
        finally:
            await context.close()

    return start
