"""Issue 23: HAProxy sheds bid requests itself, fast, whatever the replica behind it is doing.

The real bundled HAProxy through the fleet's wrapper (``fleet.runtime.ingress``,
``fleet.runtime.haproxy_shim``) in front of a stub replica (aiohttp, no Ray) that holds requests
until the test lets them go: a stalled replica. No test asserts a wall-clock duration: "at once"
is shown by order (the shed answers come back while the replica still holds its requests and a
notice still waits for its slot) and by counts (a shed request never reaches the replica).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from fleet.config import load_regions
from fleet.pipeline.deadline import ARRIVAL_HEADER, MAX_QUEUE_S
from fleet.runtime.haproxy_shim import MARK, REST_SUFFIX, TMAX_REASON, Limits, rewrite

SERVE_LIKE = """global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 60s
frontend http_frontend
    bind 127.0.0.1:{port}
    acl is_http-us-east path_beg /us-east/
    acl is_http-control path_beg /control/
    use_backend http-us-east if is_http-us-east
    use_backend http-control if is_http-control
    default_backend default_backend
backend default_backend
    http-request return status 404
backend http-us-east
    log global
    http-reuse always
    option httpchk GET /-/healthz
    server SERVE_REPLICA_us-east-ingress-us-east-abc 127.0.0.1:30000 check observe layer4 error-limit 3 on-error mark-down
    server SERVE_PROXY_ACTOR-fallback-x 127.0.0.1:8500 check backup
backend http-control
    server SERVE_REPLICA_control-Control-xyz 127.0.0.1:30001 check
"""


def _binary() -> str:
    from fleet.runtime.ingress import real_haproxy

    binary = real_haproxy()
    if binary is None:
        pytest.skip("no bundled HAProxy")
    return binary


def test_shim_rewrites_serves_config(tmp_path):
    cfg = SERVE_LIKE.format(port=18123)
    out = rewrite(cfg, Limits(server_maxconn=8, max_queue=4, bid_queue_ms=3, timeout_queue_ms=200,
                              deadlines=("/eu-west=90/10/120", "/us-east=100/15/120")))
    lines = out.splitlines()
    bind = lines.index("    bind 127.0.0.1:18123")
    assert lines[bind + 2] == f"    http-request set-header {ARRIVAL_HEADER} %[date(0,us)]"
    # every path but the bid goes to the twin, before Serve's own rule sends the rest (the bids) on
    rest = next(i for i, x in enumerate(lines) if x.startswith(f"    use_backend http-us-east{REST_SUFFIX} "))
    assert "!{ path_end /openrtb2/bid }" in lines[rest]
    assert lines.index("    use_backend http-us-east if is_http-us-east") == rest + 1
    assert f"http-control{REST_SUFFIX}" not in out  # control: no limits, no twin
    bids = out[out.index("\nbackend http-us-east\n"):out.index("\nbackend http-control")]
    assert "timeout queue 3ms" in bids and "queue() ge 4" in bids
    assert "server SERVE_REPLICA_us-east-ingress-us-east-abc 127.0.0.1:30000 maxconn 8 check" in bids
    assert "SERVE_PROXY_ACTOR-fallback-x 127.0.0.1:8500 check backup" in bids  # the backup is left alone
    # the bid's own budget (us-east's numbers, by the backend's route prefix) times its replica
    assert "json_query('$.tmax','int')" in bids and "int(120) if" in bids and "int(100) if" in bids
    assert "http-request set-timeout server var(txn.fleet_tmax),sub(15)" in bids and "sub(10)" not in out
    assert f"x-fleet-reason {TMAX_REASON} if {{ var(txn.fleet_tmax) -m int le 15 }}" in bids
    twin = out[out.index(f"\nbackend http-us-east{REST_SUFFIX}"):]
    assert "timeout queue 200ms" in twin and "queue() ge" not in twin and "httpchk" not in twin
    assert ("server SERVE_REPLICA_us-east-ingress-us-east-abc 127.0.0.1:30000 maxconn 8 "
            "track http-us-east/SERVE_REPLICA_us-east-ingress-us-east-abc") in twin  # no second health check
    assert "track http-us-east/SERVE_PROXY_ACTOR-fallback-x backup" in twin
    assert "SERVE_REPLICA_control-Control-xyz 127.0.0.1:30001 check\n" in out  # control: no limits
    assert rewrite(out, Limits()) == out and MARK in out  # applied once
    path = tmp_path / "shim.cfg"
    path.write_text(out)
    check = subprocess.run([_binary(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_a_backend_the_frontend_does_not_route_by_serves_rule_is_guarded_whole():
    """No twin without Serve's ``use_backend`` line to put it in front of: the one backend keeps
    the bid rules (by path) and the long queue timeout, so a notice is never cut short."""
    cfg = SERVE_LIKE.format(port=18125).replace("    use_backend http-us-east if is_http-us-east\n",
                                                "    use_backend http-us-east if is_http-us-east METH_POST\n")
    out = rewrite(cfg, Limits(bid_queue_ms=3, timeout_queue_ms=200, max_queue=4))
    assert REST_SUFFIX not in out and "timeout queue 200ms" in out and "timeout queue 3ms" not in out
    assert "if { var(txn.fleet_bid) -m bool } { queue() ge 4 }" in out


def test_wrapper_runs_the_shim_with_the_limits(tmp_path):
    from fleet.runtime.ingress import limits_from_env, wrapper_env

    env = {"FLEET_INGRESS_MAXCONN": "4", "FLEET_INGRESS_MAX_QUEUE": "2", "FLEET_INGRESS_BID_QUEUE_MS": "7",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "300"}
    regions = load_regions()
    assert limits_from_env(env) == Limits(4, 2, 7, 300, deadlines=tuple(
        f"{s.route_prefix}={s.max_tmax_ms}/{s.network_allowance_ms}/{regions.defaults.tmax_ms}"
        for s in regions.regions.values()))
    assert wrapper_env(tmp_path, {"FLEET_INGRESS_SHIM": "0"}) == {}
    out = wrapper_env(tmp_path, env)
    if not out:
        pytest.skip("no bundled HAProxy")
    path = Path(out["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert path.stat().st_mode & 0o111
    text = path.read_text()
    assert "haproxy_shim.py" in text and " 4 2 7 300 http-control /us-east=100/15/120," in text
    cfg = tmp_path / "serve.cfg"
    cfg.write_text(SERVE_LIKE.format(port=18124))
    check = subprocess.run([str(path), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    new = cfg.read_text()  # rewritten in place
    assert "maxconn 4 check" in new and "queue() ge 2" in new and "timeout queue 7ms" in new


class Stub:
    """A replica that holds every request until ``release`` is set; counts what reached it."""

    def __init__(self):
        self.release = asyncio.Event()
        self.held: dict[str, int] = {}
        self.arrived = asyncio.Condition()
        self.seen_arrival = ""

    async def handler(self, request):
        from aiohttp import web

        await request.read()
        kind = request.path.rsplit("/", 1)[-1]
        async with self.arrived:
            self.held[kind] = self.held.get(kind, 0) + 1
            self.arrived.notify_all()
        self.seen_arrival = request.headers.get(ARRIVAL_HEADER, "")
        await self.release.wait()
        return web.Response(status=204, headers={"x-seen-arrival": self.seen_arrival})

    async def wait_for(self, kind: str, n: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.held.get(kind, 0) >= n)


@asynccontextmanager
async def haproxy_in_front(tmp_path, env: dict[str, str], stub: Stub):
    """The wrapper's HAProxy on a Serve-like config, its one replica the stub; yields the base URL."""
    from aiohttp import web

    from fleet.runtime.ingress import wrapper_env
    from fleet.runtime.local import free_port, wait_port

    wrapper = wrapper_env(tmp_path, env).get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if wrapper is None:
        pytest.skip("no bundled HAProxy")
    front, back = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(SERVE_LIKE.format(port=front).replace("127.0.0.1:30000", f"127.0.0.1:{back}")
                   .replace(" check observe layer4 error-limit 3 on-error mark-down", "")
                   .replace("    server SERVE_PROXY_ACTOR-fallback-x 127.0.0.1:8500 check backup\n", ""))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stub.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", back).start()
    proc = subprocess.Popen([wrapper, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert await asyncio.to_thread(wait_port, "127.0.0.1", front, 10)
        yield f"http://127.0.0.1:{front}/us-east"
    finally:
        stub.release.set()
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()


def _shed(r: httpx.Response, reason: str = "overload") -> bool:
    """HAProxy's no-bid: 204, nbr 15, the reason, and nothing from the replica."""
    return (r.status_code == 204 and r.headers.get("x-fleet-reason") == reason
            and r.headers.get("x-openrtb-nbr") == "15" and "x-seen-arrival" not in r.headers)


def test_haproxy_stamps_and_sheds_a_full_queue_without_reaching_the_replica(tmp_path):
    """A forged stamp is replaced; with the replica's slots and the queue full, bid requests are
    answered 204 overload by HAProxy and never reach the replica. (The queue timeout is long here:
    only the queue's depth sheds.)"""
    env = {"FLEET_INGRESS_MAXCONN": "2", "FLEET_INGRESS_MAX_QUEUE": "2", "FLEET_INGRESS_BID_QUEUE_MS": "60000",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "60000", "FLEET_INGRESS_DEADLINES": "0"}  # no deadline no-bid here
    stub = Stub()

    async def go():
        async with haproxy_in_front(tmp_path, env, stub) as base:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as c:
                stub.release.set()
                one = await c.post(f"{base}/openrtb2/bid", content=b"{}", headers={ARRIVAL_HEADER: "1"})
                stub.release.clear()
                stub.held.clear()
                held = [asyncio.create_task(c.post(f"{base}/openrtb2/bid", content=b"{}")) for _ in range(2)]
                await stub.wait_for("bid", 2)  # both slots taken
                queued = [asyncio.create_task(c.post(f"{base}/openrtb2/bid", content=b"{}")) for _ in range(2)]
                await asyncio.sleep(0.2)  # not a timing assertion: lets the two take the queue's places
                shed = await asyncio.gather(*(c.post(f"{base}/openrtb2/bid", content=b"{}") for _ in range(8)))
                reached = dict(stub.held)
                stub.release.set()
                rest = await asyncio.gather(*held, *queued)
        return one, shed, reached, rest

    one, shed, reached, rest = asyncio.run(go())
    seen = one.headers["x-seen-arrival"]
    assert seen != "1" and abs(int(seen) / 1e6 - time.time()) < MAX_QUEUE_S
    assert all(_shed(r) for r in shed) and reached == {"bid": 2}
    assert all(r.status_code == 204 and "x-seen-arrival" in r.headers for r in rest)  # the queued were served


def test_a_stalled_replica_never_delays_a_shed_answer(tmp_path):
    """The replica stalls with every slot taken: bid requests behind it are answered 204 overload
    by HAProxy after the bid queue timeout, while the replica still holds its requests and while
    a notice queued before them still waits, and gets served once the replica moves again (its
    own queue is long: a notice outwaits a stall rather than being refused)."""
    env = {"FLEET_INGRESS_MAXCONN": "1", "FLEET_INGRESS_MAX_QUEUE": "50", "FLEET_INGRESS_BID_QUEUE_MS": "20",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "60000", "FLEET_INGRESS_DEADLINES": "0"}  # no deadline no-bid here
    stub = Stub()

    async def go():
        async with haproxy_in_front(tmp_path, env, stub) as base:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as c:
                bid = asyncio.create_task(c.post(f"{base}/openrtb2/bid", content=b"{}"))
                notice = asyncio.create_task(c.get(f"{base}/notice/win"))
                await stub.wait_for("bid", 1)
                await stub.wait_for("win", 1)  # the stall: both backends' one slot held
                waiting = asyncio.create_task(c.get(f"{base}/notice/win"))  # queued behind the stall
                shed = await asyncio.gather(*(c.post(f"{base}/openrtb2/bid", content=b"{}") for _ in range(6)))
                order = {"notice_waiting": not waiting.done(), "replica_held": dict(stub.held)}
                stub.release.set()
                late_notice = await waiting
                await asyncio.gather(bid, notice)
        return shed, order, late_notice

    shed, order, late_notice = asyncio.run(go())
    assert all(_shed(r) for r in shed)
    assert order == {"notice_waiting": True, "replica_held": {"bid": 1, "win": 1}}  # none of the six reached it
    assert late_notice.status_code == 204 and "x-fleet-reason" not in late_notice.headers


def test_what_haproxy_cannot_serve_is_a_no_bid_on_the_bid_path_and_a_503_elsewhere(tmp_path):
    """Queue timeouts reached behind a stalled replica: a bid request gets the overload no-bid from
    HAProxy, never Serve's 500 page; a readiness probe gets a 503 (a health check must not read a
    stalled or dead region as healthy)."""
    env = {"FLEET_INGRESS_MAXCONN": "1", "FLEET_INGRESS_MAX_QUEUE": "50", "FLEET_INGRESS_BID_QUEUE_MS": "50",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "100", "FLEET_INGRESS_DEADLINES": "0"}  # no deadline no-bid here
    stub = Stub()

    async def go():
        async with haproxy_in_front(tmp_path, env, stub) as base:
            async with httpx.AsyncClient(timeout=30) as c:
                first = [asyncio.create_task(c.post(f"{base}/openrtb2/bid", content=b"{}")),
                         asyncio.create_task(c.get(f"{base}/stats"))]
                await stub.wait_for("bid", 1)
                await stub.wait_for("stats", 1)
                waited = await asyncio.gather(c.post(f"{base}/openrtb2/bid", content=b"{}"), c.get(f"{base}/ready"))
                stub.release.set()
                await asyncio.gather(*first)
        return waited

    bid, ready = asyncio.run(go())
    assert _shed(bid)
    assert ready.status_code == 503 and "x-fleet-reason" not in ready.headers and "x-openrtb-nbr" not in ready.headers


def test_a_replica_gone_mid_request_is_a_no_bid_not_a_5xx(tmp_path):
    """The replica's connection drops with the request in it (a SIGKILLed replica): the bid gets
    the overload no-bid (HAProxy's 502 rewritten), a notice a 5xx (the exchange sends it again)."""
    from aiohttp import web

    class Dropping(Stub):
        async def handler(self, request):
            await request.read()
            request.transport.close()  # no answer: the connection is gone
            return web.Response(status=204)

    env = {"FLEET_INGRESS_MAXCONN": "4", "FLEET_INGRESS_MAX_QUEUE": "8", "FLEET_INGRESS_BID_QUEUE_MS": "50",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "100"}

    async def go():
        async with haproxy_in_front(tmp_path, env, Dropping()) as base:
            async with httpx.AsyncClient(timeout=30) as c:
                return await c.post(f"{base}/openrtb2/bid", content=b"{}"), await c.get(f"{base}/notice/win")

    bid, notice = asyncio.run(go())
    assert _shed(bid)
    assert notice.status_code >= 500 and "x-fleet-reason" not in notice.headers


def test_a_replica_stalled_with_bids_inside_still_answers_each_within_its_budget(tmp_path):
    """The replica takes the bids in and stalls: HAProxy answers each with the deadline no-bid
    (us-east's budget: min(tmax, 100) - 15 ms), the shortest tmax first, while the replica still
    holds all of them; once it moves, a bid it answers in time is its own answer."""
    env = {"FLEET_INGRESS_MAXCONN": "8", "FLEET_INGRESS_MAX_QUEUE": "8", "FLEET_INGRESS_BID_QUEUE_MS": "60000",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "60000"}
    stub = Stub()
    bodies = {"tmax 60": b'{"id":"a","tmax":60}', "no tmax": b'{"id":"b"}', "not json": b"{nope"}

    async def go():
        async with haproxy_in_front(tmp_path, env, stub) as base:
            async with httpx.AsyncClient(timeout=30) as c:
                async def post(label):
                    return label, await c.post(f"{base}/openrtb2/bid", content=bodies[label])

                order, answers = [], {}
                for done in asyncio.as_completed([post(k) for k in bodies]):
                    label, r = await done
                    order.append(label)
                    answers[label] = r
                held = dict(stub.held)
                stub.release.set()
                served = await c.post(f"{base}/openrtb2/bid", content=bodies["tmax 60"])
        return order, answers, held, served

    order, answers, held, served = asyncio.run(go())
    assert held == {"bid": 3}  # every one reached the replica, and none was answered by it
    assert all(_shed(r, "deadline") for r in answers.values())
    assert order[0] == "tmax 60"  # 45 ms of budget before the default's 85
    assert served.status_code == 204 and "x-seen-arrival" in served.headers


def test_a_tmax_that_leaves_no_budget_is_the_pipelines_no_bid_without_reaching_the_replica(tmp_path):
    """tmax at or below us-east's 15 ms allowance: HAProxy gives the replica's own answer (204, nbr
    15, ``tmax_below_allowance``) itself, so it cannot lose a race to its own deadline no-bid (a
    timeout of 1 ms, which a trip through Serve on a loaded box overran in CI). The replica here
    holds everything: only an answer that never reached it can come back."""
    stub = Stub()
    bodies = [b'{"id":"a","tmax":10}', b'{"id":"b","tmax":15}', b'{"id":"c","tmax":1}', b'{"id":"s","tmax":"10"}']
    # what HAProxy's json_query reads up to the first non-digit (1, 15, 1) while the replica
    # reads 100 or 1000, or drops the field for the default: not HAProxy's to answer
    theirs = [b'{"id":"e","tmax":1e2}', b'{"id":"f","tmax":15.9}', b'{"id":"g","tmax":1E3}']

    async def go():
        async with haproxy_in_front(tmp_path, {}, stub) as base:
            async with httpx.AsyncClient(timeout=30) as c:
                answers = await asyncio.gather(*(c.post(f"{base}/openrtb2/bid", content=b) for b in bodies))
                held = dict(stub.held)
                passed = await asyncio.gather(*(c.post(f"{base}/openrtb2/bid", content=b) for b in theirs))
                held_after = dict(stub.held)
                stub.release.set()
                budget = await c.post(f"{base}/openrtb2/bid", content=b'{"id":"d","tmax":60}')
        return answers, held, passed, held_after, budget

    answers, held, passed, held_after, budget = asyncio.run(go())
    assert all(_shed(r, TMAX_REASON) for r in answers) and held == {}
    assert held_after == {"bid": 3} and not any(r.headers.get("x-fleet-reason") == TMAX_REASON for r in passed)
    assert budget.status_code == 204 and "x-seen-arrival" in budget.headers  # a budget: the replica's answer


def test_a_refused_bid_is_answered_before_a_refused_notice(tmp_path):
    """The replica is gone and HAProxy has not marked it down yet (a SIGKILL between health
    checks): connections are refused. HAProxy retries a bid after milliseconds (its connect
    timeout) and answers the overload no-bid; a notice sent at the same moment waits out HAProxy's
    one-second retry turn-around and gets a 5xx."""
    from fleet.runtime.ingress import wrapper_env
    from fleet.runtime.local import free_port, wait_port

    env = {"FLEET_INGRESS_MAXCONN": "4", "FLEET_INGRESS_MAX_QUEUE": "8", "FLEET_INGRESS_BID_QUEUE_MS": "50",
           "FLEET_INGRESS_TIMEOUT_QUEUE_MS": "1000"}
    wrapper = wrapper_env(tmp_path, env).get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if wrapper is None:
        pytest.skip("no bundled HAProxy")
    front, gone = free_port(), free_port()  # nothing listens on ``gone``
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(SERVE_LIKE.format(port=front).replace("127.0.0.1:30000", f"127.0.0.1:{gone}")
                   .replace(" check observe layer4 error-limit 3 on-error mark-down", "")
                   .replace("    server SERVE_PROXY_ACTOR-fallback-x 127.0.0.1:8500 check backup\n", "")
                   .replace("    timeout connect 5s\n", "    timeout connect 5s\n    retries 1\n"))

    async def go():
        proc = subprocess.Popen([wrapper, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert await asyncio.to_thread(wait_port, "127.0.0.1", front, 10)
            base = f"http://127.0.0.1:{front}/us-east"
            async with httpx.AsyncClient(timeout=30) as c:
                async def send(label, coro):
                    return label, await coro

                order, answers = [], {}
                for done in asyncio.as_completed([send("notice", c.get(f"{base}/notice/win")),
                                                  send("bid", c.post(f"{base}/openrtb2/bid", content=b"{}"))]):
                    label, r = await done
                    order.append(label)
                    answers[label] = r
        finally:
            proc.terminate()
            proc.wait(10)
        return order, answers

    order, answers = asyncio.run(go())
    assert _shed(answers["bid"]) and answers["notice"].status_code >= 500
    assert order == ["bid", "notice"]
