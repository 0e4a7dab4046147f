"""An upstream that answers with exactly the bytes a test scripts, then ends as told.

The mock provider is a well-behaved server; the faults a proxy must survive
are in how a broken one frames and ends its answer: a body that stops short,
an ``[DONE]`` followed by a socket held open, a reset, a gzip body nobody
asked for, an event that never ends. This server reads one request per
connection and writes its script byte for byte, over a raw socket.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

End = Literal["close", "hold", "reset"]


@dataclass
class Script:
    head: bytes  # status line and headers, the blank line included
    pieces: list[bytes] = field(default_factory=list)  # body bytes, each written (and drained) on its own
    end: End = "close"  # close the socket, hold it open until the proxy closes it, or reset it
    pause_s: float = 0.0  # between pieces


@dataclass
class Served:
    request: bytes = b""
    # Set when the proxy closed its side (EOF or reset): for "hold", that is the proxy giving up on us.
    proxy_closed: asyncio.Event = field(default_factory=asyncio.Event)


def sse_head(content_type: bytes = b"text/event-stream", extra: bytes = b"", *, chunked: bool = True) -> bytes:
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n" + framing + extra + b"\r\n"


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


@dataclass
class ScriptedUpstream:
    port: int = 0
    scripts: asyncio.Queue[Script] = field(default_factory=asyncio.Queue)
    served: list[Served] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = Served()
        self.served.append(served)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            served.request = head + await reader.readexactly(length)
            script = await self.scripts.get()
            writer.write(script.head)
            for piece in script.pieces:
                writer.write(piece)
                await writer.drain()
                if script.pause_s:
                    await asyncio.sleep(script.pause_s)
            if script.end == "hold":
                await reader.read()  # until the proxy closes its side
            elif script.end == "reset":
                sock = writer.get_extra_info("socket")
                # Linger 0: close() sends a RST, not a FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            served.proxy_closed.set()
            writer.close()


@asynccontextmanager
async def scripted_upstream() -> AsyncIterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    server = await asyncio.start_server(upstream._handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        await server.wait_closed()
