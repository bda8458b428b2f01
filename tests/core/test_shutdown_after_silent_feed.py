"""An app whose Redis feeds went silent because its event loop was blocked (a blocking call, a long pause) still
shuts down promptly: whether the loop was blocked long before the shutdown, just before it, or during its first
turns, when the feed followers wake up, ping and reconnect at the very moment they are being stopped.

The last case is the one that hung: on Python 3.11 a follower cancelled just as redis-py finished sending its
ping (under ``asyncio.wait_for``) lost the cancellation and went on for ever, so the lifespan never ended."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sehat.identity.revocation import FEED_STALE_AFTER_SECONDS

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

# Past the revocation feed's stale bound, so that the blocked loop makes it count as silent.
STALL_SECONDS = FEED_STALE_AFTER_SECONDS + 0.25
# Prompt: the shutdown takes no more than the stall (when it falls during the shutdown) and this.
PROMPT_SECONDS = 1.5


def block_the_loop(loop: asyncio.AbstractEventLoop, *, after_turns: int) -> None:
    """Block the event loop for ``STALL_SECONDS``, ``after_turns`` turns of the loop from now (0: at once)."""
    if after_turns:
        loop.call_soon(lambda: block_the_loop(loop, after_turns=after_turns - 1))
    else:
        time.sleep(STALL_SECONDS)


async def until(condition: Any) -> None:
    """Wait (up to 5 s) for ``condition`` to hold."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("still not true after 5 s")


# None: blocked long before the shutdown, which begins once both feeds are back. 0: blocked just before leaving,
# the feeds reconnecting as the shutdown begins. n: blocked n turns of the loop into the shutdown.
@pytest.mark.parametrize("stall_turn", [None, *range(8)])
async def test_an_app_whose_redis_feeds_went_silent_still_shuts_down_promptly(
    start_api: Any, redis_url: str, stall_turn: int | None
) -> None:
    try:
        # Without the audit sealer and anomaly passes: their work is not what this is about.
        async with start_api(redis_url=redis_url, background_jobs=False) as api:
            revocations, realtime = api.auth.revoked, api.app.state.realtime
            assert revocations.in_sync and realtime.listening
            if stall_turn is None:
                block_the_loop(asyncio.get_running_loop(), after_turns=0)
                assert not revocations.in_sync  # the feed counts as silent
                await until(lambda: revocations.in_sync and realtime.listening)
                leaving = time.monotonic()
            else:
                leaving = time.monotonic()
                block_the_loop(asyncio.get_running_loop(), after_turns=stall_turn)
    except TimeoutError:  # asgi_lifespan gives the shutdown 5 s
        pytest.fail("the app did not finish shutting down")
    stalled = STALL_SECONDS if stall_turn is not None else 0.0
    assert time.monotonic() - leaving <= stalled + PROMPT_SECONDS
