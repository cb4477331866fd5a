"""The fleet's additions to the HAProxy config Ray Serve writes, applied as HAProxy starts.

Serve renders its HAProxy config from a fixed template with no hook for request rules, so
``RAY_SERVE_HAPROXY_BINARY_PATH`` points at a small wrapper (``fleet.runtime.ingress``) that
runs this file: it adds the fleet's lines to the ``-f`` config and ``exec``s the real binary on it
(same pid, same arguments, so Serve's reloads, ``-sf`` hand-overs and stats socket
work as before). What it adds (docs/ingress.md, "Arrival, queue and shedding"):

- the frontend stamps every request's arrival, ``x-fleet-arrival: <epoch microseconds>``, with
  ``set-header`` (which replaces any value a client sent: the stamp is never the exchange's);
- each application backend (not control's) is split in two over the same replicas: bid requests
  stay in Serve's backend, every other path (notices, readiness, stats) goes to a twin
  ``<backend>-rest`` whose servers ``track`` Serve's (no second health check). Bids get a
  per-replica ``maxconn`` (the rest wait in HAProxy's queue, where they can be counted), a rule
  that answers 204 at once (OpenRTB nbr 15, ``x-fleet-reason: overload``) when the queue is
  already ``max_queue`` deep, and a ``timeout queue`` of a few milliseconds after which HAProxy
  answers the same no-bid: a stalled, saturated or dead replica never delays a shed answer.
  The twin keeps a long queue timeout: a notice outwaits a collector's pause rather than being
  refused, and a readiness probe gets a 503, never a no-bid;
- a bid request sent to a replica that does not answer within the request's own budget
  (``min(tmax, max_tmax) - network allowance``, its region's, read from the body with
  ``json_query``) is answered by HAProxy: 204, nbr 15, ``x-fleet-reason: deadline`` (the reason
  the replica gives its own late no-bids), so a replica stalled with requests inside it still
  answers the exchange in time (the replica's late answer, a no-bid anyway, is dropped); one
  whose tmax leaves no budget at all is answered the replica's own immediate no-bid
  (``x-fleet-reason: tmax_below_allowance``) by HAProxy, without the trip.

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
BID_CONNECT_MS = 10  # a replica on this host or the next accepts in well under this
REST_SUFFIX = "-rest"  # the twin backend of every path but the bid
MARK = "# fleet:"  # every line this file adds carries it (and a rewrite is never applied twice)


@dataclass(frozen=True)
class Limits:
    server_maxconn: int = 16  # per replica and backend: max_ongoing_requests >= twice this
    # Saturated, a replica frees a slot about every 0.7 ms (~1,500 req/s): a bid queued deeper
    # than what frees in ``bid_queue_ms`` would only wait to be shed, so it is shed at once.
    max_queue: int = 4  # bid requests queued per backend before new ones are shed at once
    # A bid waits at most this for a replica's slot, then HAProxy answers the no-bid: a shed
    # answer never waits on a stalled replica (docs/benchmarks.md, "Overload").
    bid_queue_ms: int = 1
    # Every other path: long enough for a notice to outwait a GC pause (a refused notice is
    # sent again; a 503 is a 5xx all the same).
    timeout_queue_ms: int = 1000
    unlimited: tuple[str, ...] = ("http-control",)  # backends left as Serve wrote them
    # per route prefix, "PREFIX=MAX_TMAX/ALLOWANCE/DEFAULT_TMAX" (ms, the region's): the bid's budget
    deadlines: tuple[str, ...] = ()
    # where each region replica's bid front publishes its port (fleet.serve.bid_front); "": none
    fronts: str = ""

    def args(self) -> list[str]:
        return [str(self.server_maxconn), str(self.max_queue), str(self.bid_queue_ms), str(self.timeout_queue_ms),
                ",".join(self.unlimited), ",".join(self.deadlines), self.fronts]

    @classmethod
    def parse(cls, argv: list[str]) -> "Limits":
        maxconn, queue, bid_ms, timeout_ms, unlimited, deadlines, *fronts = argv
        return cls(int(maxconn), int(queue), int(bid_ms), int(timeout_ms), _words(unlimited), _words(deadlines),
                   fronts[0] if fronts else "")

    def front_port(self, server: str) -> int | None:
        """The port of the bid front of the replica named ``server`` in Serve's config (the name
        ends ``-<replica unique id>``), when that replica published one on this node."""
        if not self.fronts:
            return None
        uid = server.rsplit("-", 1)[-1]
        try:
            with open(os.path.join(self.fronts, uid)) as fh:
                port = int(fh.read().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def budget(self, prefix: str | None) -> tuple[int, int, int] | None:
        """(max tmax, network allowance, default tmax) of the region served at ``prefix``."""
        for d in self.deadlines:
            p, _, ms = d.partition("=")
            if p == prefix:
                top, allowance, default = (int(x) for x in ms.split("/"))
                return top, allowance, default
        return None


def _words(s: str) -> tuple[str, ...]:
    return tuple(w for w in s.split(",") if w)


_SERVER = re.compile(r"^(\s+server\s+(\S+)\s+\S+)(\s.*)?$")
_USE = re.compile(r"^\s+use_backend\s+(\S+)\s+if\s+is_(\S+)\s*$")
_ACL = re.compile(r"^\s+acl\s+is_(\S+)\s+path_beg\s+(/\S*?)/?\s*$")
_KEEP = ("timeout connect", "timeout server", "timeout client", "timeout http-request",
         "timeout http-keep-alive", "timeout tunnel", "http-reuse", "log ")


OVERLOAD_RESPONSE = (f"HTTP/1.1 204 No Content\r\nx-openrtb-nbr: {OVERLOAD_NBR}\r\n"
                     f"x-fleet-reason: {OVERLOAD_REASON}\r\ncontent-length: 0\r\n\r\n")
DEADLINE_REASON = "deadline"  # the pipeline's own reason for a no-bid its deadline forced
TMAX_REASON = "tmax_below_allowance"  # the pipeline's own reason for a tmax that leaves no budget
DEADLINE_RESPONSE = OVERLOAD_RESPONSE.replace(OVERLOAD_REASON, DEADLINE_REASON)
UNAVAILABLE_RESPONSE = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"


def rewrite(cfg: str, limits: Limits, files: dict[str, str] | None = None) -> str:
    """Serve's config with the fleet's lines added (idempotent). ``files``: errorfiles by kind.
    ``overload`` (``OVERLOAD_RESPONSE``): a bid request HAProxy itself cannot serve (``timeout
    queue``, no replica up, the replica gone mid-request) gets the no-bid instead of Serve's 500
    page; ``deadline`` (``DEADLINE_RESPONSE``): one its replica did not answer within its budget;
    ``unavailable`` (``UNAVAILABLE_RESPONSE``): the twin's 503 (a readiness probe must not read a
    stalled or dead region as healthy)."""
    files = files or {}
    if MARK in cfg:
        return cfg
    lines = cfg.splitlines()
    # split only what the frontend routes by Serve's own rule: else the bid rules guard the one backend
    split = {m.group(1) for m in map(_USE.match, lines) if m and m.group(1) == m.group(2)}
    prefix = {m.group(1): m.group(2) for m in map(_ACL.match, lines) if m}
    out: list[str] = []
    twins: dict[str, list[str]] = {}
    section, name = "", ""
    for line in lines:
        if line and not line[0].isspace() and not line.startswith("#"):
            words = line.split()
            section, name = words[0], (words[1] if len(words) > 1 else "")
            out.append(line)
            if section == "backend" and _limited(name, limits):
                twin = name in split
                if twin:
                    twins[name] = [f"backend {name}{REST_SUFFIX}",
                                   f"    {MARK} every path of {name} but the bid: the same replicas, a long queue",
                                   f"    timeout queue {limits.timeout_queue_ms}ms"]
                    if "unavailable" in files:
                        twins[name].append(f"    errorfile 503 {files['unavailable']}")
                out += _bid_rules(limits, limits.bid_queue_ms if twin else limits.timeout_queue_ms, files)
                out += _deadline_rules(limits.budget(prefix.get(name)))
            continue
        if section == "frontend" and name == "http_frontend":
            if line.strip().startswith("bind "):
                out += [line, f"    {MARK} arrival at the fleet, never the client's value",
                        f"    http-request set-header {ARRIVAL_HEADER} %[date(0,us)]"]
                continue
            m = _USE.match(line)
            if m and m.group(1) in split and _limited(m.group(1), limits):
                out.append(f"    use_backend {m.group(1)}{REST_SUFFIX} if is_{m.group(2)} !{{ path_end {BID_PATH} }}"
                           f"  {MARK} bids stay below")
        m = _SERVER.match(line)
        if section == "backend" and _limited(name, limits):
            replica = bool(m) and m.group(2).startswith("SERVE_REPLICA")
            if replica and " maxconn " not in line:
                line = f"{m.group(1)} maxconn {limits.server_maxconn}{m.group(3) or ''}"
            if name in twins:
                if m:
                    twins[name].append(_twin_server(name, m.group(1), m.group(2), m.group(3) or "", replica, limits))
                    if replica:
                        line = _to_front(line, m, limits)
                elif line.strip().startswith(_KEEP) and not line.strip().startswith("timeout queue"):
                    twins[name].append(line)
        out.append(line)
    for twin in twins.values():
        out += twin
    return "\n".join(out) + "\n"


def _bid_rules(limits: Limits, queue_ms: int, files: dict[str, str]) -> list[str]:
    # the bid mark first: every later rule, the return below included, relies on it
    out = [
        f"    {MARK} queue limits and shedding (fleet/runtime/haproxy_shim.py)",
        f"    http-request set-var(txn.fleet_bid) bool(true) if {{ path_end {BID_PATH} }}",
        f"    timeout queue {queue_ms}ms",
        # HAProxy waits min(timeout connect, 1 s) before retrying a refused connection (a replica
        # just SIGKILLed): a bid's retry, and its no-bid, come after milliseconds, not a second
        f"    timeout connect {BID_CONNECT_MS}ms",
        f"    http-request return status 204 hdr x-openrtb-nbr {OVERLOAD_NBR} hdr x-fleet-reason {OVERLOAD_REASON}"
        f" if {{ var(txn.fleet_bid) -m bool }} {{ queue() ge {limits.max_queue} }}",
    ]
    if "overload" in files:
        not_bid = "!{ var(txn.fleet_bid) -m bool }"
        out += [f"    errorfile {code} {files['overload']}" for code in (502, 503)]
        out += [f"    errorfile 504 {files.get('deadline', files['overload'])}"]
        out += [
            f"    http-after-response set-status 503 if {{ status 204 }}"
            f" {{ res.hdr(x-fleet-reason) -m str {OVERLOAD_REASON} {DEADLINE_REASON} }} {not_bid}",
            f"    http-after-response del-header x-fleet-reason if {{ status 503 }} {not_bid}",
            f"    http-after-response del-header x-openrtb-nbr if {{ status 503 }} {not_bid}",
        ]
    return out


def _deadline_rules(budget: tuple[int, int, int] | None) -> list[str]:
    """``timeout server`` of each bid request: its budget, as the replica plans it (a tmax absent
    or 0 is the default; above the region's maximum, the maximum), from its own body."""
    if budget is None:
        return []
    top, allowance, default = budget
    bid, tmax = "{ var(txn.fleet_bid) -m bool }", "var(txn.fleet_tmax)"
    return [
        f"    {MARK} a bid its replica has not answered within its budget: HAProxy's no-bid, in time",
        "    option http-buffer-request",
        # a plain integer only: json_query reads 1e2 or 15.9 up to the first non-digit (1, 15),
        # where the replica reads 100 or drops the field; anything else gets the default
        f"    http-request set-var(txn.fleet_tmax) req.body,json_query('$.tmax','int') if {bid}"
        """ { req.body -m reg '"tmax"\\s*:\\s*"?-?[0-9]{1,9}"?\\s*[,}]' }""",
        f"    http-request set-var(txn.fleet_tmax) int({default}) if {bid} !{{ {tmax} -m found }}",
        f"    http-request set-var(txn.fleet_tmax) int({default}) if {{ {tmax} -m int le 0 }}",
        f"    http-request set-var(txn.fleet_tmax) int({top}) if {{ {tmax} -m int gt {top} }}",
        # no budget at all: the pipeline's immediate no-bid, given here (a trip to the replica and
        # back in under 1 ms was a race HAProxy's own deadline no-bid could win)
        f"    http-request return status 204 hdr x-openrtb-nbr {OVERLOAD_NBR} hdr x-fleet-reason {TMAX_REASON}"
        f" if {{ {tmax} -m int le {allowance} }}",
        f"    http-request set-timeout server {tmax},sub({allowance}) if {{ {tmax} -m found }}",
    ]


def _to_front(line: str, m: re.Match, limits: Limits) -> str:
    """The bid backend's server line of a replica with a bid front on this node: bids go to the
    front (loopback, where it listens), health checks stay on Serve's port (``check port``)."""
    port = limits.front_port(m.group(2))
    if port is None:
        return line
    head, _, addr = m.group(1).rpartition(" ")
    serve_port = addr.rpartition(":")[2]
    rest = line[len(m.group(1)):]
    if " check" in rest and " port " not in rest:
        rest = rest.replace(" check", f" check port {serve_port}", 1)
    return f"{head} 127.0.0.1:{port}{rest}  {MARK} bid front"


def _twin_server(backend: str, head: str, server: str, rest: str, replica: bool, limits: Limits) -> str:
    """The twin's server: the same address, its own slots, the health of Serve's (``track``)."""
    words = rest.split()
    line = head + (f" maxconn {limits.server_maxconn}" if replica else "")
    if "check" in words:
        line += f" track {backend}/{server}"
    return line + (" backup" if "backup" in words else "")


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
            files = {}
            for kind, body in (("overload", OVERLOAD_RESPONSE), ("deadline", DEADLINE_RESPONSE),
                               ("unavailable", UNAVAILABLE_RESPONSE)):
                files[kind] = os.path.join(os.path.dirname(path), f"fleet-{kind}.http")
                with open(files[kind], "w") as fh:
                    fh.write(body)
            new = rewrite(text, limits, files)
            if new != text:
                tmp = f"{path}.fleet.{os.getpid()}"
                with open(tmp, "w") as fh:
                    fh.write(new)
                os.replace(tmp, path)
    os.execv(real, [real, *args])


def main(argv: list[str]) -> None:
    """``haproxy_shim.py REAL MAXCONN MAX_QUEUE BID_QUEUE_MS TIMEOUT_QUEUE_MS UNLIMITED DEADLINES -- ARGS...``"""
    sep = argv.index("--")
    real, limits = argv[0], Limits.parse(argv[1:sep])
    exec_haproxy(real, limits, argv[sep + 1:])


if __name__ == "__main__":
    main(sys.argv[1:])
