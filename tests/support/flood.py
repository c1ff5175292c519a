"""A connection flood against an HTTP listener: N concurrent raw connections, one GET each.

Run as its own process (``python -m tests.support.flood HOST PORT PATH N TIMEOUT``) so the
flood's CPU does not share a GIL with the test's reference hub; it prints one JSON object: how
many connections got which answer (``200``, ``503``, ...) or which failure (``reset``,
``refused``, ``timeout``, ``closed``: a connection closed without an answer), and the
wall-clock ``started``/``ended`` of the flood.  Raw sockets, not an HTTP client: a client pool
would queue the requests instead of opening the connections at once.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter


async def _one(host: str, port: int, path: str, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                head = await reader.readline()
                if not head:
                    return "closed"
                await reader.read()  # the body, up to the server's close
                return head.split()[1].decode()
            finally:
                writer.close()
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except OSError as exc:
        return f"oserror:{exc.errno}"


async def flood(host: str, port: int, path: str, n: int, timeout: float) -> dict[str, object]:
    started = time.time()
    results = await asyncio.gather(*(_one(host, port, path, timeout) for _ in range(n)))
    return {"counts": dict(Counter(results)), "started": started, "ended": time.time()}


def main(argv: list[str]) -> None:
    host, port, path, n, timeout = argv[0], int(argv[1]), argv[2], int(argv[3]), float(argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {want}: cannot open {n}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    print(json.dumps(asyncio.run(flood(host, port, path, n, timeout))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
