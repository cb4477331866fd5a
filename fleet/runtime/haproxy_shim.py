"""The fleet's additions to the HAProxy config Ray Serve writes, applied as HAProxy starts.

Serve renders its HAProxy config from a fixed template with no hook for request rules, so
``RAY_SERVE_HAPROXY_BINARY_PATH`` points at a small wrapper (``fleet.runtime.ingress``) that
runs this file: it adds the fleet's lines to the ``-f`` config and ``exec``s the real binary on it
(same pid, same arguments, so Serve's reloads, ``-sf`` hand-overs and stats socket
work as before). What it adds (docs/ingress.md, "Arrival, queue and shedding"):

- the frontend stamps every request's arrival, ``x-fleet-arrival: <epoch microseconds>``, with
  ``set-header`` (which replaces any value a client sent: the stamp is never the exchange's);
- each application backend (not control's) gets a per-replica ``maxconn`` (the concurrency a
  replica serves well; the rest wait in HAProxy's queue, where they can be counted), a
  ``timeout queue`` backstop, and a rule that answers a bid request 204 at once (OpenRTB nbr 15,
  ``x-fleet-reason: overload``) when the backend's queue is already ``max_queue`` deep, and
  the same no-bid (not Serve's 500 page) when a bid request waited ``timeout queue`` or finds no
  replica up.

Standard library only: it runs on every HAProxy start and reload, before anything else is
imported (``python -I -S``).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

ARRIVAL_HEADER = "x-fleet-arrival"  # the same name as fleet.pipeline.deadline.ARRIVAL_HEADER
OVERLOAD_REASON = "overload"
OVERLOAD_NBR = 15  # OpenRTB "Insufficient Auction Time" (fleet.openrtb.nbr.NBR)
BID_PATH = "/openrtb2/bid"
MARK = "# fleet:"  # every line this file adds carries it (and a rewrite is never applied twice)


@dataclass(frozen=True)
class Limits:
    server_maxconn: int = 16  # per replica: its max_ongoing_requests should be at least this
    max_queue: int = 16  # bid requests queued per backend before new ones are shed
    # A backstop: the queue is kept short by ``max_queue``, so only a replica stalled this long
    # leaves requests waiting so long; then a bid request gets the overload no-bid, any other
    # path (notices, readiness) HAProxy's 503. Long enough for a notice to outwait a GC pause.
    timeout_queue_ms: int = 1000
    unlimited: tuple[str, ...] = ("http-control",)  # backends left as Serve wrote them

    def args(self) -> list[str]:
        return [str(self.server_maxconn), str(self.max_queue), str(self.timeout_queue_ms), ",".join(self.unlimited)]

    @classmethod
    def parse(cls, argv: list[str]) -> "Limits":
        maxconn, queue, timeout_ms, unlimited = argv
        return cls(int(maxconn), int(queue), int(timeout_ms), tuple(u for u in unlimited.split(",") if u))


_SERVER = re.compile(r"^(\s+server\s+SERVE_REPLICA\S*\s+\S+)(\s.*)?$")


OVERLOAD_RESPONSE = (f"HTTP/1.1 204 No Content\r\nx-openrtb-nbr: {OVERLOAD_NBR}\r\n"
                     f"x-fleet-reason: {OVERLOAD_REASON}\r\ncontent-length: 0\r\n\r\n")


def rewrite(cfg: str, limits: Limits, overload_file: str | None = None) -> str:
    """Serve's config with the fleet's lines added (idempotent). ``overload_file``: an errorfile
    holding ``OVERLOAD_RESPONSE``: a bid request HAProxy itself cannot serve (``timeout queue``,
    no replica up) gets the no-bid instead of Serve's 500 page; any other path still gets a 503
    (a readiness probe must not read a dead region as healthy)."""
    if MARK in cfg:
        return cfg
    out: list[str] = []
    section, name = "", ""
    for line in cfg.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            words = line.split()
            section, name = words[0], (words[1] if len(words) > 1 else "")
            out.append(line)
            if section == "backend" and _limited(name, limits):
                # the bid mark first: every later rule, the return below included, relies on it
                out += [
                    f"    {MARK} queue limits and shedding (fleet/runtime/haproxy_shim.py)",
                    f"    http-request set-var(txn.fleet_bid) bool(true) if {{ path_end {BID_PATH} }}",
                    f"    timeout queue {limits.timeout_queue_ms}ms",
                    f"    http-request return status 204 hdr x-openrtb-nbr {OVERLOAD_NBR} hdr x-fleet-reason {OVERLOAD_REASON}"
                    f" if {{ var(txn.fleet_bid) -m bool }} {{ queue() ge {limits.max_queue} }}",
                ]
                if overload_file:
                    not_bid = "!{ var(txn.fleet_bid) -m bool }"
                    out += [
                        f"    errorfile 503 {overload_file}",
                        f"    http-after-response set-status 503 if {{ status 204 }}"
                        f" {{ res.hdr(x-fleet-reason) -m str {OVERLOAD_REASON} }} {not_bid}",
                        f"    http-after-response del-header x-fleet-reason if {{ status 503 }} {not_bid}",
                        f"    http-after-response del-header x-openrtb-nbr if {{ status 503 }} {not_bid}",
                    ]
            continue
        if section == "frontend" and name == "http_frontend" and line.strip().startswith("bind "):
            out += [line, f"    {MARK} arrival at the fleet, never the client's value",
                    f"    http-request set-header {ARRIVAL_HEADER} %[date(0,us)]"]
            continue
        m = _SERVER.match(line)
        if section == "backend" and m and _limited(name, limits) and " maxconn " not in line:
            line = f"{m.group(1)} maxconn {limits.server_maxconn}{m.group(2) or ''}"
        out.append(line)
    return "\n".join(out) + "\n"


def _limited(backend: str, limits: Limits) -> bool:
    return (backend.startswith("http-") and backend not in limits.unlimited
            and not backend.endswith("-via-ingress-request-router"))


def exec_haproxy(real: str, limits: Limits, args: list[str]) -> None:
    """Rewrite the ``-f`` config in place and become the real HAProxy on it. In place: Serve
    finds its workers by the config path in their command line, and rewrites the whole file
    (under the same lock) before each start."""
    if "-f" in args:
        import fcntl

        path = args[args.index("-f") + 1]
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            with open(path) as fh:
                text = fh.read()
            overload = os.path.join(os.path.dirname(path), "fleet-overload.http")
            with open(overload, "w") as fh:
                fh.write(OVERLOAD_RESPONSE)
            new = rewrite(text, limits, overload)
            if new != text:
                tmp = f"{path}.fleet.{os.getpid()}"
                with open(tmp, "w") as fh:
                    fh.write(new)
                os.replace(tmp, path)
    os.execv(real, [real, *args])


def main(argv: list[str]) -> None:
    """``haproxy_shim.py REAL_BINARY MAXCONN MAX_QUEUE TIMEOUT_QUEUE_MS UNLIMITED -- HAPROXY_ARGS...``"""
    sep = argv.index("--")
    real, limits = argv[0], Limits.parse(argv[1:sep])
    exec_haproxy(real, limits, argv[sep + 1:])


if __name__ == "__main__":
    main(sys.argv[1:])
