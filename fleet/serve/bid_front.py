"""The region's bid front: bid requests from HAProxy straight to the bid path, past Serve's HTTP.

Serve's per-request handling of an HTTP request (its replica wrapper, uvicorn's ASGI cycle,
Starlette) costs ~180-200 us of CPU, more than half the bid path itself; an HTTP/1.1 server of
httptools' parser under an ``asyncio.Protocol`` costs ~11 (docs/benchmarks.md, "A lean HTTP
front, measured"). Each region ingress replica listens here too, on the loop its handler runs
on, and tells the node's HAProxy its port by a file named for the replica
(``<FLEET_BID_FRONT_DIR>/<replica unique id>``): the fleet's HAProxy wrapper
(``fleet.runtime.haproxy_shim``) points the replica's bid server at it, health checks still at
Serve's port. Everything else (notices, readiness, stats) and every replica HAProxy has no file
for (another node's, one whose front did not start) stays on Serve's HTTP. The socket is bound
and the file written in the replica's constructor, and the server started in its first health
check: both before Serve marks the replica running and HAProxy is reloaded with it.

The answer is the one the Serve handler gives (``fleet.serve.region_app``): the region's
``bid`` with the same headers (lower-case names, a repeated name's first value) and arrival
clock; 405 for another method, 404 for another path, 413 over the body cap; answers in the
requests' order on a connection, keep-alive unless asked to close. Bad framing is a 400.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from http import HTTPStatus
from pathlib import Path

import httptools
import msgspec

from fleet.pipeline.deadline import now

log = logging.getLogger("fleet.region")
DIR_VAR = "FLEET_BID_FRONT_DIR"  # set by ray_env() / fleet.runtime.pod; unset: no front
BID_PATH = "/openrtb2/bid"


def http_response(status: int, headers: dict[str, str], body: bytes, close: bool = False) -> bytes:
    """One HTTP/1.1 response; content-length added except on 204 and 304 (no body)."""
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    if status not in (204, 304):
        head.append(f"content-length: {len(body)}")
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


_encode = msgspec.json.Encoder().encode


def _json(status: int, body: bytes, close: bool = False) -> bytes:
    return http_response(status, {"content-type": "application/json"}, body, close)


# what both HTTP paths refuse a bid request with (this front and the Serve handler, region_app)
TOO_LARGE_ERROR = {"error": "body over the size limit", "nbr": 2}
NOT_POST_ERROR = {"error": "use POST"}
TOO_LARGE = _json(413, _encode(TOO_LARGE_ERROR), close=True)
BAD_REQUEST = _json(400, b'{"error":"malformed HTTP request"}', close=True)
NOT_POST = _json(405, _encode(NOT_POST_ERROR))
FAILED = _json(500, b'{"error":"internal error"}')


class _Connection(asyncio.Protocol):
    def __init__(self, front: BidFront) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.last: asyncio.Future | None = None  # the previous answer: written first
        self.refused = False  # a 400 or 413 is on its way: nothing after it is read
        self.complete = False  # the current message was dispatched
        self._reset()

    def _reset(self) -> None:
        self.url, self.headers, self.body, self.size, self.arrival = b"", {}, [], 0, 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        """The client (HAProxy, at the budget) is gone: its bids stop, as Serve cancels them."""
        for task in self.front.tasks_of(self):
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not a subclass of HttpParserError
            # an Upgrade or CONNECT: what was asked is answered (Serve answers it plainly too),
            # then the connection closes; a CONNECT never completes a message: a 400
            self._refuse(b"" if self.complete else BAD_REQUEST)
        except httptools.HttpParserError:
            self._refuse(BAD_REQUEST)

    def _refuse(self, response: bytes) -> None:
        """The last answer on this connection, after those already under way."""
        if self.refused or self.transport.is_closing():
            return
        self.refused = True
        self.transport.pause_reading()
        self.last = self.front.track(self, self._answer(response, b"", {}, 0.0, False, self.last))

    def on_message_begin(self) -> None:
        self._reset()
        self.complete = False
        self.arrival = now()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        # HAProxy answers 100-continue itself where it buffers the body (every bid backend with
        # a deadline); elsewhere a client that waits for it would wait out its tmax
        if self.headers.get("expect", "").lower() == "100-continue" and (self.last is None or self.last.done()):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        if self.refused:
            return
        self.size += len(chunk)
        if self.size > self.front.region.max_body:
            self._refuse(TOO_LARGE)  # stops reading as soon as it is over, as the Serve handler
        else:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.complete = True
        if self.refused or self.transport.is_closing():
            return
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        self.front.requests += 1
        if not path.endswith(BID_PATH):
            answer = _json(404, _encode({"error": f"no route {path[-200:]}"}))
        elif method == b"HEAD":
            answer = _json(405, b"")
        elif method != b"POST":
            answer = NOT_POST
        else:
            answer = None
        self.last = self.front.track(self, self._answer(answer, b"".join(self.body), self.headers,
                                                        self.arrival, keep, self.last))

    async def _answer(self, answer: bytes | None, body: bytes, headers: dict[str, str], arrival: float,
                      keep: bool, before: asyncio.Future | None) -> None:
        if answer is None:
            try:
                a = await self.front.region.bid(body, headers, arrival)
                answer = http_response(a.status, a.headers, a.body)
            except asyncio.CancelledError:
                if self.transport.is_closing():
                    raise  # the connection is gone: nothing to answer
                answer = FAILED  # cancelled from inside: the answers behind it still go out
            except Exception:
                log.exception("bid front: the bid path failed")
                answer = FAILED
        if before is not None and not before.done():
            await asyncio.wait([before])  # its failure is its own, never this answer's
        if not self.transport.is_closing():
            self.transport.write(answer)
            if not keep:
                self.transport.close()


class BidFront:
    """One replica's front: ``bind()`` (sync, in the constructor), ``await start()``, ``close()``."""

    def __init__(self, region, replica: str, directory: str | Path) -> None:
        self.region, self.replica, self.directory = region, replica, Path(directory)
        self.sock: socket.socket | None = None
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.requests = 0  # answered here (/stats: ``bid_front``)
        self.tasks: dict[asyncio.Task, _Connection] = {}  # answers under way, by connection

    def track(self, conn: _Connection, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks[task] = conn
        task.add_done_callback(self.tasks.pop)
        return task

    def under_way(self) -> int:
        """Bids taken and not yet answered (started or not)."""
        return len(self.tasks)

    def tasks_of(self, conn: _Connection) -> list[asyncio.Task]:
        return [t for t, c in self.tasks.items() if c is conn]

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Stop taking bids and let those under way answer (Serve's drain does not see them)."""
        if self.server is not None:
            self.server.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout_s)

    def stats(self) -> dict:
        return {"port": self.port, "serving": self.server is not None, "requests": self.requests}

    @property
    def file(self) -> Path:
        return self.directory / self.replica

    def bind(self, host: str = "127.0.0.1") -> int:
        """Listen (the kernel queues what comes before ``start``) and publish the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(1024)
        sock.setblocking(False)
        self.sock, self.port = sock, sock.getsockname()[1]
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.replica}.{os.getpid()}")
        tmp.write_text(f"{self.port}\n")
        os.replace(tmp, self.file)
        return self.port

    async def start(self) -> None:
        if self.server is None and self.sock is not None:
            self.server = await asyncio.get_running_loop().create_server(lambda: _Connection(self), sock=self.sock)

    def close(self) -> None:
        try:
            self.file.unlink()
        except OSError:
            pass
        if self.server is not None:
            self.server.close()
        elif self.sock is not None:
            self.sock.close()


def from_env(region, replica: str, env=os.environ) -> BidFront | None:
    """The replica's front, bound and published, when the environment names the directory (the
    fleet's HAProxy wrapper reads it); None without one, or when it cannot listen (Serve's HTTP
    then takes the bids, as before)."""
    directory = env.get(DIR_VAR)
    if not directory or replica == "local":
        return None
    front = BidFront(region, replica, directory)
    try:
        front.bind()
    except OSError as exc:
        log.warning("bid front not started (Serve's HTTP takes the bids): %s", exc)
        front.close()
        return None
    return front
