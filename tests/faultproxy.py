"""A small TCP proxy for fault tests: put it between two services and make the link slow,
cut it (connection resets) or blackhole it (bytes swallowed, nothing answered).

It forwards bytes only, so mutual TLS passes through it untouched. It runs its own asyncio
loop in a daemon thread, so synchronous tests can steer it while the mesh talks through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

PASS, BLACKHOLE, RESET, ANSWERS_HELD, ANSWER_DROPPED = "pass", "blackhole", "reset", "answers held", "answer dropped"


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.mode = PASS
        self.delay_s = 0.0
        self.drop_after_bytes = 0
        self.dropped = threading.Event()  # set once drop_answer has dropped a connection
        self.port = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        # Open links end inside the loop first, so that none is left to a closed loop.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close_all(self) -> None:
        for link in list(self._links):
            link.client.close()
            link.server.close()
        if self._server is not None:
            self._server.close()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- steering (from any thread) -------------------------------------------------

    def heal(self) -> None:
        self.mode, self.delay_s = PASS, 0.0

    def delay(self, seconds: float) -> None:
        """Every chunk of bytes waits `seconds` before it is passed on (both ways)."""
        self.delay_s = seconds

    def blackhole(self) -> None:
        """Bytes go in and nothing comes out (held, not dropped), on open connections and new ones."""
        self.mode = BLACKHOLE

    def hold_answers(self) -> None:
        """Bytes to the upstream pass, bytes back are held: the upstream does the work and its
        answer is lost to the caller (until healed)."""
        self.mode = ANSWERS_HELD

    def drop_answer(self, after_bytes: int) -> None:
        """The next answer is lost after the upstream sent it: bytes back are held (not passed on)
        until `after_bytes` of them have come, then that connection is reset and the proxy heals
        itself (a retry connects anew). For "the server handed its answer over and the caller
        never got it" (a connection that drops once the answer has passed the server)."""
        self.drop_after_bytes = after_bytes
        self.dropped.clear()
        self.mode = ANSWER_DROPPED

    def reset(self) -> None:
        """Open connections are reset (RST) and new ones are reset at once, until healed."""
        self.mode = RESET
        self._loop.call_soon_threadsafe(self._reset_all)

    @contextlib.contextmanager
    def fault(self, mode: str, delay_s: float = 0.0) -> Iterator[None]:
        {BLACKHOLE: self.blackhole, RESET: self.reset, PASS: lambda: None}[mode]()
        self.delay(delay_s)
        try:
            yield
        finally:
            self.heal()

    # -- inside the proxy's loop ----------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    def _reset_all(self) -> None:
        for link in list(self._links):
            _rst(link.client)
            _rst(link.server)
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == RESET:
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))
        finally:
            self._links.discard(link)
            for end in (writer, up_writer):
                end.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        held = 0  # bytes back held while an answer is being dropped
        try:
            while data := await reader.read(65536):
                if self.mode == ANSWER_DROPPED and not upstream:
                    held += len(data)
                    if held >= self.drop_after_bytes:
                        self.heal()
                        self.dropped.set()
                        _rst(writer)
                        return
                    continue
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                # A partition: nothing passes and nothing is refused; as with lost packets that
                # TCP sends again, what was sent arrives once the link heals.
                while self.mode == BLACKHOLE or (self.mode == ANSWERS_HELD and not upstream):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                if self.mode == RESET:
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
