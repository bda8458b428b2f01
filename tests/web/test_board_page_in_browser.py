"""The lobby board's page in a real browser (Debian's Chromium, headless): opened at the address given at
enrolment, it keeps the display key and drops it from the address bar, shows the queue under its strict
content security policy without a single console error, and follows the queue live as tokens are called; a
screen whose key is refused says so and stops trying."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import expect

from tests.conftest import Api
from tests.queue.conftest import Opd, open_opd, serving

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

WAIT_MS = 5000


@pytest.fixture
async def opd(api: Api, clock: Any) -> Opd:
    return await open_opd(api, clock, rooms=2)


async def test_the_board_page_shows_the_queue_keeps_its_key_out_of_the_address_and_follows_call_next(
    opd: Opd, open_screen: Any
) -> None:
    board = await opd.enrol_board()
    await opd.issued(0)
    await opd.issued(1)
    # The browser's clock is the server's (stopped at tomorrow's opening, Karachi time), so that the waits it
    # shows are the real estimates; they are only looked at in the screenshot.
    async with serving(opd.api.app) as host, open_screen(timezone_id="Asia/Karachi") as screen:
        page = screen.page
        await page.clock.set_fixed_time(opd.opening)
        await page.goto(f"http://{host}{board['page_url']}")
        queue = page.locator(f'section.queue[data-queue="{opd.queue_id}"]')
        rooms, waiting = queue.locator("table:not(.next)"), queue.locator("table.next")

        await expect(waiting.locator("td.token")).to_have_text(["GM-001", "GM-002"], timeout=WAIT_MS)
        await expect(page.locator("#title")).to_have_text("OPD lobby")
        await expect(queue.locator("h2")).to_have_text("General Medicine")
        await expect(rooms.locator("td")).to_have_text(["Room 1", "—", "Room 2", "—"])
        await expect(page.locator("#status")).to_have_text("")
        # The key left the address bar (and the history) but stayed with the screen.
        assert "#" not in page.url and board["display_key"] not in page.url
        assert page.url == f"http://{host}/boards/{board['id']}"
        kept = await page.evaluate("(board) => localStorage.getItem('sehat-board-key:' + board)", board["id"])
        assert kept == board["display_key"]
        sequence = int(await page.locator("body").get_attribute("data-sequence") or "")

        called = await opd.call_next(room=0)
        assert called.status_code == 200, called.text
        await expect(page.locator("body")).to_have_attribute("data-sequence", str(sequence + 1), timeout=WAIT_MS)
        await expect(rooms.locator("td")).to_have_text(["Room 1", "GM-001", "Room 2", "—"])
        await expect(rooms.locator("td.token.called")).to_have_text("GM-001")
        await expect(waiting.locator("td.token")).to_have_text(["GM-002"])
        await screen.screenshot("lobby-board", docs="lobby-board.png")

        # Reopened without the fragment (a screen restarting), it still has its key and the current state.
        await page.reload()
        await expect(rooms.locator("td.token")).to_have_text(["GM-001"], timeout=WAIT_MS)
        await expect(page.locator("body")).to_have_attribute("data-sequence", str(sequence + 1))
        assert screen.errors == []


async def test_a_board_page_with_a_wrong_key_says_it_was_refused_and_stops_reconnecting(
    opd: Opd, open_screen: Any
) -> None:
    board = await opd.enrol_board()
    other = await opd.enrol_board(name="Second lobby")
    await opd.issued(0)
    async with serving(opd.api.app) as host, open_screen() as screen:
        page = screen.page
        sockets: list[Any] = []
        page.on("websocket", lambda socket: sockets.append(socket))
        # Another board's real key: refused all the same.
        await page.goto(f"http://{host}/boards/{board['id']}#key={other['display_key']}")
        await expect(page.locator("#status")).to_have_text("This screen's display key was refused.", timeout=WAIT_MS)
        await expect(page.locator("section.queue")).to_have_count(0)
        await expect(page.locator("#title")).to_have_text("Lobby board")
        assert page.url == f"http://{host}/boards/{board['id']}"
        # A refused screen would retry after one second: well past that, still the one socket, closed.
        await asyncio.sleep(1.5)
        assert len(sockets) == 1 and sockets[0].is_closed()
        await expect(page.locator("#status")).to_have_text("This screen's display key was refused.")
        await screen.screenshot("lobby-board-refused")
        assert screen.errors == []
