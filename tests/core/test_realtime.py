"""The realtime broadcaster: every subscriber of a channel, in every process, gets its current state, in order,
with a sequence number; a late or reconnecting subscriber is brought up to date at once; a slow one skips to
the newest state. The Redis tests run two broadcasters on separate connections, as two server processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from sehat.core.realtime import Broadcaster, Envelope, MemoryBroadcaster, RedisBroadcaster, Subscription

WAIT = 3.0

Pair = tuple[Broadcaster, Broadcaster]


def board() -> str:
    return f"board:{uuid.uuid4()}"


async def next_message(subscription: Subscription) -> Envelope:
    return await asyncio.wait_for(anext(subscription), WAIT)


async def nothing_more(subscription: Subscription) -> bool:
    try:
        await asyncio.wait_for(anext(subscription), 0.3)
    except TimeoutError:
        return True
    return False


@contextlib.asynccontextmanager
async def two_redis_processes(
    redis_url: str, *, first_through: str | None = None, **options: Any
) -> AsyncIterator[tuple[RedisBroadcaster, RedisBroadcaster, str]]:
    """Two broadcasters on their own Redis connections, as two server processes (the first one's connections
    through ``first_through`` when given); and the client name of the first one's connections."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    name = f"{prefix}realtime"
    urls = (first_through or redis_url, redis_url)
    clients = [Redis.from_url(url, client_name=f"{name}-{side}") for url, side in zip(urls, "ab", strict=True)]
    pair = (RedisBroadcaster(clients[0], prefix, **options), RedisBroadcaster(clients[1], prefix, **options))
    for broadcaster in pair:
        await broadcaster.start()
    try:
        yield pair[0], pair[1], f"{name}-a"
    finally:
        for broadcaster in pair:
            await broadcaster.stop()
        async for key in clients[0].scan_iter(match=prefix + "*"):
            await clients[0].delete(key)
        for client in clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def broadcasters(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """Where a change is published and where it is watched: one process in memory; two on Redis."""
    if kind == "memory":
        memory = MemoryBroadcaster()
        yield memory, memory
        await memory.stop()
        return
    async with two_redis_processes(request.getfixturevalue("redis_url")) as (first, second, _):
        yield first, second


async def test_each_publication_reaches_the_subscriber_in_order_with_a_sequence_growing_by_one(
    broadcasters: Pair,
) -> None:
    publisher, watcher = broadcasters
    channel = board()
    async with watcher.subscribe(channel) as updates:
        received = []
        for number in range(1, 4):
            await publisher.publish(channel, {"serving": f"GM-{number:03d}"})
            received.append(await next_message(updates))
    first = received[0].sequence
    assert [json.loads(message.text) for message in received] == [
        {"sequence": first + offset, "state": {"serving": f"GM-{offset + 1:03d}"}} for offset in range(3)
    ]
    assert [message.sequence for message in received] == [first, first + 1, first + 2]


async def test_a_subscriber_that_joins_late_gets_the_current_state_at_once(broadcasters: Pair) -> None:
    publisher, watcher = broadcasters
    channel = board()
    await publisher.publish(channel, {"serving": "GM-001"})
    latest = await publisher.publish(channel, {"serving": "GM-002"})
    async with watcher.subscribe(channel) as updates:
        message = await next_message(updates)
        assert (message.sequence, json.loads(message.text)["state"]) == (latest.sequence, {"serving": "GM-002"})
        assert await nothing_more(updates)


async def test_a_reconnecting_subscriber_that_has_the_current_sequence_is_not_sent_it_again(
    broadcasters: Pair,
) -> None:
    publisher, watcher = broadcasters
    channel = board()
    seen = await publisher.publish(channel, {"serving": "GM-001"})
    async with watcher.subscribe(channel, seen=seen.sequence) as updates:
        assert await nothing_more(updates)
        await publisher.publish(channel, {"serving": "GM-002"})
        assert (await next_message(updates)).sequence == seen.sequence + 1


async def test_a_reconnecting_subscriber_behind_the_current_sequence_gets_the_current_state(
    broadcasters: Pair,
) -> None:
    publisher, watcher = broadcasters
    channel = board()
    published = [await publisher.publish(channel, {"serving": number}) for number in range(1, 6)]
    async with watcher.subscribe(channel, seen=published[2].sequence) as updates:
        message = await next_message(updates)
        assert (message.sequence, json.loads(message.text)["state"]) == (published[4].sequence, {"serving": 5})


async def test_a_subscriber_claiming_a_sequence_the_channel_never_reached_is_brought_to_the_current_state(
    broadcasters: Pair,
) -> None:
    publisher, watcher = broadcasters
    channel = board()
    current = await publisher.publish(channel, {"serving": "GM-004"})
    async with watcher.subscribe(channel, seen=current.sequence + 1_000_000) as updates:
        assert (await next_message(updates)).sequence == current.sequence
        await publisher.publish(channel, {"serving": "GM-005"})
        assert (await next_message(updates)).sequence == current.sequence + 1


async def test_an_older_publication_still_on_its_way_does_not_hide_the_current_state_from_a_new_subscriber() -> None:
    # On Redis a message published before a subscriber joined can reach it after it joined, before the
    # current state it reads: the newer of the two is what it gets.
    channel = board()
    updates = Subscription(channel)
    updates.offer(Envelope(channel, 7, '{"sequence":7,"state":{"serving":"GM-001"}}'))
    updates.offer_first(Envelope(channel, 8, '{"sequence":8,"state":{"serving":"GM-002"}}'), seen=None)
    assert (await next_message(updates)).sequence == 8
    assert await nothing_more(updates)


async def test_a_slow_subscriber_skips_to_the_newest_state_instead_of_queueing_every_one(broadcasters: Pair) -> None:
    publisher, watcher = broadcasters
    channel = board()
    async with watcher.subscribe(channel) as updates:
        published = [await publisher.publish(channel, {"serving": number}) for number in range(1, 51)]
        await _until(lambda: _pending_sequence(updates) == published[-1].sequence)
        message = await next_message(updates)
        assert (message.sequence, json.loads(message.text)["state"]) == (published[-1].sequence, {"serving": 50})
        assert await nothing_more(updates)


# Generations as boards make them: a day number times 10**9 plus versions, just below what a double holds.
BIG = 2**53 - 100


async def test_a_state_of_an_older_generation_published_late_is_dropped_and_the_newer_one_stays(
    broadcasters: Pair,
) -> None:
    publisher, watcher = broadcasters
    channel = board()
    async with watcher.subscribe(channel) as updates:
        newer = await publisher.publish(channel, {"serving": "GM-002"}, generation=BIG + 7)
        assert (await next_message(updates)).sequence == newer.sequence
        # Another process built its state before this one and publishes it after: it must not win.
        late = await publisher.publish(channel, {"serving": "GM-001"}, generation=BIG + 6)
        same = await publisher.publish(channel, {"serving": "GM-002"}, generation=BIG + 7)
        assert late == newer and same == newer
        assert await nothing_more(updates)
        newest = await publisher.publish(channel, {"serving": "GM-003"}, generation=BIG + 8)
        with pytest.raises(ValueError):
            await publisher.publish(channel, {"serving": "GM-004"}, generation=2**53)
        message = await next_message(updates)
    assert (message.sequence, json.loads(message.text)["state"]) == (newer.sequence + 1, {"serving": "GM-003"})
    assert newest.sequence == message.sequence
    assert (await watcher.current(channel)) == newest


async def test_subscribers_of_another_channel_hear_nothing(broadcasters: Pair) -> None:
    publisher, watcher = broadcasters
    watched, other = board(), board()
    async with watcher.subscribe(watched) as updates:
        await publisher.publish(other, {"serving": "GM-009"})
        assert await nothing_more(updates)
    assert watcher.local_subscribers(watched) == 0


async def test_every_subscriber_of_a_channel_gets_the_same_text(broadcasters: Pair) -> None:
    publisher, watcher = broadcasters
    channel = board()
    async with watcher.subscribe(channel) as first, watcher.subscribe(channel) as second:
        assert watcher.local_subscribers(channel) == 2
        published = await publisher.publish(channel, {"next": ["GM-002", "GM-003"]})
        assert (await next_message(first)).text == (await next_message(second)).text == published.text


async def test_a_channel_name_that_is_not_ours_is_refused(broadcasters: Pair) -> None:
    publisher, _ = broadcasters
    for name in ("Board:1", "board:../../x", "board:", "x" * 40 + ":1", "board:1 2"):
        with pytest.raises(ValueError):
            await publisher.publish(name, {})


@pytest.mark.redis
async def test_a_subscriber_whose_redis_subscription_dropped_gets_what_was_published_meanwhile(redis_url: str) -> None:
    channel = board()
    async with two_redis_processes(redis_url) as (watcher, publisher, name), watcher.subscribe(channel) as updates:
        first = await publisher.publish(channel, {"serving": "GM-001"})
        assert (await next_message(updates)).sequence == first.sequence
        await _kill_subscriptions(redis_url, name)
        await _until(lambda: not watcher.listening)
        # Published while the watcher hears nothing: only its catch-up after reconnecting can deliver it.
        await publisher.publish(channel, {"serving": "GM-002"})
        message = await next_message(updates)
        assert (message.sequence, json.loads(message.text)["state"]) == (first.sequence + 1, {"serving": "GM-002"})
        assert watcher.listening


@pytest.mark.redis
async def test_a_subscriber_whose_redis_feed_went_silent_without_an_error_gets_what_was_published_meanwhile(
    redis_url: str,
) -> None:
    channel = board()
    async with (
        _Relay(redis_url) as relay,
        two_redis_processes(redis_url, first_through=relay.url, stale_after=0.5) as (watcher, publisher, _),
        watcher.subscribe(channel) as updates,
    ):
        first = await publisher.publish(channel, {"serving": "GM-001"})
        assert (await next_message(updates)).sequence == first.sequence
        # The watcher's subscription goes deaf as over a half-open link: its socket stays open, writes to it
        # succeed, nothing comes back. No error tells the watcher; only the silence can.
        assert relay.deafen(b"PSUBSCRIBE") == 1
        await publisher.publish(channel, {"serving": "GM-002"})
        await _until(lambda: not watcher.listening)
        message = await next_message(updates)
        assert (message.sequence, json.loads(message.text)["state"]) == (first.sequence + 1, {"serving": "GM-002"})
        await _until(lambda: watcher.listening)
        # And the new subscription is a working one.
        third = await publisher.publish(channel, {"serving": "GM-003"})
        assert (await next_message(updates)).sequence == third.sequence


@pytest.mark.redis
async def test_a_channel_whose_state_expired_starts_above_every_sequence_it_used_so_subscribers_still_hear_it(
    redis_url: str,
) -> None:
    channel = board()
    async with two_redis_processes(redis_url) as (watcher, publisher, _), watcher.subscribe(channel) as updates:
        published = [await publisher.publish(channel, {"serving": number}) for number in range(3)]
        before = await next_message(updates)
        while before.sequence != published[-1].sequence:  # on Redis the three may arrive one by one
            before = await next_message(updates)
        # Expiry comes after two idle days; a channel publishes far less than once a millisecond over its life.
        await asyncio.sleep(0.01)
        # What expiry does to an idle channel: its sequence and state are gone from Redis.
        removed = 0
        async for key in watcher._redis.scan_iter(match=f"*rt:*:{channel}"):  # the store, not the code under test
            removed += await watcher._redis.delete(key)
        assert removed == 2
        assert await watcher.current(channel) is None
        after = await publisher.publish(channel, {"serving": "again"})
        assert after.sequence > before.sequence
        message = await next_message(updates)
        assert (message.sequence, json.loads(message.text)["state"]) == (after.sequence, {"serving": "again"})


async def _kill_subscriptions(redis_url: str, client_name: str) -> None:
    admin = Redis.from_url(redis_url)
    try:
        killed = 0
        for client in await admin.client_list():
            if client.get("name") == client_name and int(client.get("psub", 0)) > 0:
                await admin.client_kill_filter(_id=client["id"])
                killed += 1
        assert killed == 1
    finally:
        await admin.aclose()


@dataclass
class _Link:
    words: set[bytes] = field(default_factory=set)  # what the client has sent: command names and such
    deaf: bool = False
    open: bool = True


class _Relay:
    """A TCP relay to Redis that can make some of its links deaf without closing them, as a half-open
    connection or a network partition does: bytes are still taken from both ends, none is passed on."""

    def __init__(self, redis_url: str) -> None:
        self._target = urlsplit(redis_url)
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> _Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(self._target._replace(netloc=f"127.0.0.1:{port}"))
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def deafen(self, command: bytes) -> int:
        """Deafen every open link that has carried ``command``; how many."""
        chosen = [link for link in self._links if link.open and command.upper() in link.words]
        for link in chosen:
            link.deaf = True
        return len(chosen)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(self._target.hostname, self._target.port or 6379)
        link = _Link()
        self._links.append(link)
        for pump in (
            self._pump(link, client_reader, redis_writer, from_client=True),
            self._pump(link, redis_reader, client_writer, from_client=False),
        ):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if from_client:
                    link.words.update(part.upper() for part in data.split(b"\r\n") if part.isalpha())
                if not link.deaf:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            link.open = False  # one end is gone: so is the link
            writer.close()


def _pending_sequence(subscription: Subscription) -> int | None:
    pending = subscription._pending  # waiting for delivery, not asserting on internals
    return pending.sequence if pending is not None else None


async def _until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)
