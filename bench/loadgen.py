"""Fallback load generator, used only when wrk cannot be had: keep-alive HTTP/1.1 GETs on loopback.

Each process runs one asyncio task per connection, sending the next request as soon as the previous
response is read (as wrk does). It speaks just enough HTTP for this purpose: a GET, a response with a
Content-Length. The parent (``harness.run_python_load``) starts one process per load thread and merges
their output: a JSON object with every latency in microseconds, the count of responses with a status
above 399 (wrk's "Non-2xx or 3xx") and of socket errors.

    python bench/loadgen.py --host 127.0.0.1 --port 8000 --path /healthz --connections 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    latencies_us: list[int] = field(default_factory=list)
    bad_status: int = 0
    socket_errors: int = 0


def build_request(host: str, port: int, path: str, headers: list[str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise ValueError("response without Content-Length")


async def keep_requesting(host: str, port: int, request: bytes, deadline: float, tally: Tally) -> None:
    while time.perf_counter() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally.socket_errors += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                tally.latencies_us.append(round((time.perf_counter() - sent) * 1e6))
                if int(head[9:12]) > 399:
                    tally.bad_status += 1
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            tally.socket_errors += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def generate(host: str, port: int, path: str, headers: list[str], connections: int, seconds: float) -> dict:
    request = build_request(host, port, path, headers)
    tally = Tally()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(keep_requesting(host, port, request, deadline, tally) for _ in range(connections)))
    return {
        "elapsed_seconds": time.perf_counter() - started,
        "latencies_us": tally.latencies_us,
        "bad_status": tally.bad_status,
        "socket_errors": tally.socket_errors,
    }


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    options = parser.parse_args(arguments)
    run = generate(options.host, options.port, options.path, options.header, options.connections, options.duration)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run)
    else:
        result = uvloop.run(run)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
