"""Realtime plumbing (DESIGN §1): a broadcaster that carries the current state of a channel, such as a lobby
board or a patient's view of their token, to every subscriber in every server process.

- A message is always a channel's whole current state, never a change to apply. A subscriber that falls
  behind may therefore skip to the newest message: each subscription holds one pending message, the newest,
  so a slow screen costs one message of memory, not a backlog.
- Each channel's messages carry a sequence number that grows by one per publication and is shared by every
  process. A subscriber that says which sequence it last saw gets the current state at once unless it
  already has exactly that one (a reconnecting board is brought up to date without waiting for a change).
  A channel's first sequence is the clock in milliseconds, not 1: a channel idle long enough for its state
  to expire starts again above every number it used before, so a subscriber never mistakes new news for old.
- ``MemoryBroadcaster`` keeps everything in the process (embedded mode). ``RedisBroadcaster`` keeps each
  channel's sequence and current state in Redis and publishes through Redis pub/sub, so a change made through
  one server reaches sockets connected to another. Every process hears every channel (one pattern
  subscription) and hands a message only to its own local subscribers of that channel. A lost subscription,
  including one that went silent without an error (pinged, no answer for ``FEED_STALE_AFTER_SECONDS``), is
  re-made, and every locally watched channel's current state re-read.

What a message contains is the publisher's business; the wire text is built once per publication, and every
socket sends that same text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis

from sehat.core.redis_feed import FeedWatch, await_confirmation, stop_follower

log = structlog.get_logger("sehat.realtime")

# Channel names are ours (``board:<uuid>``, ``token:<uuid>``), never a caller's text.
_CHANNEL = re.compile(r"^[a-z][a-z_-]{0,31}:[0-9a-f-]{1,64}$")
# A channel's state outlives a working day and its evening session; then it may go.
STATE_TTL_SECONDS = 2 * 24 * 3600
MAX_GENERATION = 2**53
_WIRE_PREFIX = b'{"sequence":'
_RECONNECT_DELAY_SECONDS = 0.5
# The feed is pinged four times within this bound; a process that has heard nothing on it for this long (a
# silently dead connection, a partition) re-subscribes and catches up. This is the longest a screen can go on
# showing a state that has changed, when Redis is up.
FEED_STALE_AFTER_SECONDS = 4.0


@dataclass(frozen=True)
class Envelope:
    """One publication: the channel, its sequence number and the wire text,
    ``{"sequence": <n>, "state": <the state>}``."""

    channel: str
    sequence: int
    text: str


def wire_text(sequence: int, state_json: bytes) -> str:
    return (_WIRE_PREFIX + str(sequence).encode() + b',"state":' + state_json + b"}").decode()


def sequence_of(text: str | bytes) -> int:
    """The sequence number at the head of a wire text."""
    raw = text.encode() if isinstance(text, str) else text
    if not raw.startswith(_WIRE_PREFIX):
        raise ValueError("not a realtime message")
    digits = raw[len(_WIRE_PREFIX) : raw.index(b",", len(_WIRE_PREFIX))]
    return int(digits)


def first_sequence() -> int:
    """A channel's first sequence number: the clock, in milliseconds."""
    return time.time_ns() // 1_000_000


def check_generation(generation: int | None) -> None:
    if generation is not None and not 0 <= generation < MAX_GENERATION:
        raise ValueError("a generation is a whole number below 2**53")


def check_channel(channel: str) -> str:
    if not _CHANNEL.match(channel):
        raise ValueError(f"not a realtime channel name: {channel!r}")
    return channel


class Subscription:
    """One subscriber's view of a channel: an async iterator of envelopes, the newest pending one only."""

    def __init__(self, channel: str, *, seen: int | None = None) -> None:
        self.channel = channel
        self._pending: Envelope | None = None
        self._offered_any = False  # whether a publication (or a re-read state) has been offered yet
        # The newest sequence the subscriber has or has been offered: an older or equal one is late news.
        self._known = seen or 0
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, envelope: Envelope) -> None:
        """A publication, or a state read after a reconnection: it replaces any message not taken yet, unless
        the subscriber already has that state or a newer one (on Redis, a message published before the state
        was read may arrive after it)."""
        if envelope.sequence <= self._known:
            return
        self._known = envelope.sequence
        self._offered_any = True
        self._pending = envelope
        self._ready.set()

    def offer_first(self, current: Envelope | None, *, seen: int | None) -> None:
        """The current state read as the subscription starts. Given unless the subscriber has exactly that
        sequence; and, when a publication reached it while the state was being read, only if newer than that
        one (on Redis it may be an older publication still on its way)."""
        if not self._offered_any:
            if current is not None and current.sequence == seen:
                return
            # Whatever else the subscriber says it has seen is not the current state (an expired channel, or a
            # number from elsewhere): it is brought to the current one.
            self._known = 0
        if current is not None:
            self.offer(current)

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            if self._closed:
                raise StopAsyncIteration
            envelope = self._pending
            if envelope is not None:
                self._pending = None
                self._ready.clear()
                return envelope
            await self._ready.wait()


class _LocalHub:
    """This process's subscribers, by channel."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    def add(self, subscription: Subscription) -> None:
        self._subscribers.setdefault(subscription.channel, set()).add(subscription)

    def remove(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]

    def deliver(self, envelope: Envelope) -> None:
        for subscription in self._subscribers.get(envelope.channel, ()):
            subscription.offer(envelope)

    def subscriptions(self) -> list[Subscription]:
        return [subscription for subscribers in self._subscribers.values() for subscription in subscribers]

    def count(self, channel: str) -> int:
        return len(self._subscribers.get(channel, ()))

    def close_all(self) -> None:
        for subscription in self.subscriptions():
            subscription.close()


class Broadcaster(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, channel: str, state: Mapping[str, Any], *, generation: int | None = None) -> Envelope:
        """Make ``state`` the channel's current state and send it to every subscriber, in every process.

        A state built from data that only grows (versions) may carry that data's ``generation``: it is then
        published only if it is newer than the last one published with a generation, so that two processes
        racing to publish the same channel cannot leave the older state last. Otherwise the current envelope
        is returned and nothing is sent. A generation is below ``MAX_GENERATION``: Redis compares it as a
        double."""
        ...

    async def current(self, channel: str) -> Envelope | None: ...

    def subscribe(
        self, channel: str, *, seen: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Subscribe for as long as the context lasts. The current state comes first, unless the subscriber
        already has sequence ``seen``."""
        ...

    def local_subscribers(self, channel: str) -> int: ...


class _SubscribeMixin:
    _hub: _LocalHub

    async def current(self, channel: str) -> Envelope | None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, *, seen: int | None = None) -> AsyncIterator[Subscription]:
        subscription = Subscription(check_channel(channel), seen=seen)
        self._hub.add(subscription)
        try:
            # Registered first, then read: a publication in between is offered by the hub, and the read is
            # offered over it only if newer.
            subscription.offer_first(await self.current(channel), seen=seen)
            yield subscription
        finally:
            self._hub.remove(subscription)
            subscription.close()

    def local_subscribers(self, channel: str) -> int:
        return self._hub.count(channel)


class MemoryBroadcaster(_SubscribeMixin):
    """Embedded mode: one process, so the process's own memory is the whole truth."""

    def __init__(self) -> None:
        self._hub = _LocalHub()
        self._current: dict[str, tuple[Envelope, float]] = {}
        self._generations: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._hub.close_all()

    async def publish(self, channel: str, state: Mapping[str, Any], *, generation: int | None = None) -> Envelope:
        check_channel(channel)
        check_generation(generation)
        previous = self._current.get(channel)
        now = time.monotonic()
        if generation is not None:
            if previous is not None and previous[1] > now and self._generations.get(channel, -1) >= generation:
                return previous[0]
            self._generations[channel] = generation
        sequence = previous[0].sequence + 1 if previous is not None and previous[1] > now else first_sequence()
        envelope = Envelope(channel, sequence, wire_text(sequence, orjson.dumps(state)))
        self._current[channel] = (envelope, now + STATE_TTL_SECONDS)
        if len(self._current) > 10_000:
            self._current = {name: kept for name, kept in self._current.items() if kept[1] > now}
            self._generations = {name: kept for name, kept in self._generations.items() if name in self._current}
        self._hub.deliver(envelope)
        return envelope

    async def current(self, channel: str) -> Envelope | None:
        kept = self._current.get(check_channel(channel))
        return kept[0] if kept is not None and kept[1] > time.monotonic() else None


# KEYS: the sequence key, the state key, the pub/sub channel, the generation key. ARGV: the state's JSON, the
# TTL in seconds, the generation ('' for none). One script, so that the sequence, the stored state and the
# order of publications agree in every process.
_PUBLISH = """
if ARGV[3] ~= '' then
  local known = redis.call('GET', KEYS[4])
  if known and tonumber(known) >= tonumber(ARGV[3]) and redis.call('EXISTS', KEYS[2]) == 1 then
    return redis.call('GET', KEYS[2])
  end
  redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[2])
end
local sequence
if redis.call('EXISTS', KEYS[1]) == 1 then
  sequence = redis.call('INCR', KEYS[1])
else
  local now = redis.call('TIME')
  sequence = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('SET', KEYS[1], string.format('%d', sequence))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local text = '{"sequence":' .. string.format('%d', sequence) .. ',"state":' .. ARGV[1] .. '}'
redis.call('SET', KEYS[2], text, 'EX', ARGV[2])
redis.call('PUBLISH', KEYS[3], text)
return text
"""


class RedisBroadcaster(_SubscribeMixin):
    """Production mode: each channel's sequence and current state in Redis, publications through pub/sub.

    One follower task per process listens to every channel under the prefix and hands each message to this
    process's subscribers of that channel. When the subscription is lost it reconnects, then reads each
    locally watched channel's current state, so that a subscriber misses no final state (intermediate ones may
    be skipped: each message is a whole state). A subscription that hears nothing, not even the answer to a
    ping, for ``stale_after`` seconds counts as lost."""

    def __init__(self, redis: Redis, prefix: str, *, stale_after: float = FEED_STALE_AFTER_SECONDS) -> None:
        self._redis = redis
        self._prefix = prefix + "rt:"
        self._hub = _LocalHub()
        self._script = redis.register_script(_PUBLISH)
        self._follower: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._feed = FeedWatch(ping_every=stale_after / 4, stale_after=stale_after)

    async def start(self) -> None:
        self._follower = asyncio.create_task(self._follow())
        # A healthy Redis answers at once; a dead one must not hold up start-up (publishing then fails, and
        # the follower keeps trying).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout=2)

    async def stop(self) -> None:
        # Not a single cancel() and await: the follower can lose a cancellation (see stop_follower).
        await stop_follower(self._follower)
        self._hub.close_all()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    async def publish(self, channel: str, state: Mapping[str, Any], *, generation: int | None = None) -> Envelope:
        check_channel(channel)
        check_generation(generation)
        text = await self._script(
            keys=[
                self._key("seq", channel),
                self._key("state", channel),
                self._prefix + channel,
                self._key("gen", channel),
            ],
            args=[orjson.dumps(state), STATE_TTL_SECONDS, "" if generation is None else str(generation)],
        )
        text = text.decode() if isinstance(text, bytes) else str(text)
        return Envelope(channel, sequence_of(text), text)

    async def current(self, channel: str) -> Envelope | None:
        text = await self._redis.get(self._key("state", check_channel(channel)))
        if text is None:
            return None
        decoded = text.decode() if isinstance(text, bytes) else str(text)
        return Envelope(channel, sequence_of(decoded), decoded)

    def _key(self, kind: str, channel: str) -> str:
        return f"{self._prefix}{kind}:{channel}"

    async def _follow(self) -> None:
        pattern = self._prefix + "*"
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(pattern)
                await await_confirmation(pubsub, "psubscribe")
                self._listening.set()
                await self._catch_up()
                await self._feed.listen(pubsub, self._on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._listening.is_set():
                    log.warning("realtime_subscription_lost", exc_type=type(exc).__name__)
                self._listening.clear()
                await asyncio.sleep(_RECONNECT_DELAY_SECONDS)
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _catch_up(self) -> None:
        """After (re)subscribing: each watched channel's current state, for subscribers that missed it."""
        for subscription in self._hub.subscriptions():
            current = await self.current(subscription.channel)
            if current is not None:
                subscription.offer(current)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "pmessage":
            self._hand_on(message["channel"], message["data"])

    def _hand_on(self, redis_channel: bytes | str, data: bytes | str) -> None:
        name = redis_channel.decode() if isinstance(redis_channel, bytes) else redis_channel
        text = data.decode() if isinstance(data, bytes) else data
        channel = name.removeprefix(self._prefix)
        try:
            envelope = Envelope(check_channel(channel), sequence_of(text), text)
        except ValueError:
            # Only this module publishes under the prefix; anything else that matches the pattern is not ours
            # to forward to a screen.
            log.warning("realtime_message_ignored")
            return
        self._hub.deliver(envelope)


def build_broadcaster(redis: Redis | None, prefix: str) -> Broadcaster:
    return RedisBroadcaster(redis, prefix) if redis is not None else MemoryBroadcaster()
