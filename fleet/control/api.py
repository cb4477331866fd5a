"""The control HTTP API's routes, as plain Python: ``(method, path, ...) -> (status, body)``.

The Serve deployment (``fleet.serve.control_app``) checks the bearer token and hands requests
here through the control actor; tests call ``route`` on a ``Control`` directly. Writes take an
``Idempotency-Key``: a retried write gets the first answer and changes nothing twice.

    GET  /v1/state                      epoch, model assignment, Redis, health summary
    GET  /v1/dashboard                  what the dashboard at /control/ shows, in one document
    GET  /v1/campaigns                  every campaign's flight and pacing figures
    GET  /v1/campaigns/{id}             one
    PUT  /v1/campaigns/{id}             create or change a flight (budget, start, end, curve, ...)
    GET  /v1/leases                     leases outstanding
    GET  /v1/policies                   cutoff policy per tier, with its epoch
    PUT  /v1/policies/{tier}            set one tier's policy
    GET  /v1/partners                   demand partners: cutoff and share per tier (and why), ceilings,
                                        backoffs, pins, each region's participation counters
    PUT  /v1/partners/{id}/{tier}       pin a partner's cutoff on a tier: {"cutoff_ms": ms, "share": s}
    DELETE /v1/partners/{id}/{tier}     unpin it (control's computation takes it back)
    GET  /v1/rollouts                   every rollout with its history
    GET  /v1/rollouts/thresholds        canary thresholds; PUT changes them (new rollouts)
    POST /v1/rollouts                   start one: {"version": ..., "baseline": ...}
    POST /v1/rollouts/{id}/abort        {"reason": ...}
    GET  /v1/health                     region health from heartbeats
    POST /v1/regions/{region}/sync      a replica's report -> its push (leases, policy, model)
    GET  /v1/regions/{region}/watch     long-poll: ?epoch=N&wait=S
"""

from __future__ import annotations

import json
from dataclasses import asdict
from urllib.parse import parse_qs

import msgspec

from fleet.control.messages import decode_report
from fleet.control.pace_view import pace_view
from fleet.control.service import Control


def _json(body: bytes) -> dict:
    if not body:
        return {}
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError("the body must be a JSON object")
    return obj


async def route(c: Control, method: str, path: str, query: str = "", body: bytes = b"",
                idem: str | None = None) -> tuple[int, object]:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "v1":
        return 404, {"error": f"no route {path}"}
    parts = parts[1:]
    try:
        return await _route(c, method, parts, query, body, idem)
    except (ValueError, msgspec.ValidationError, msgspec.DecodeError, json.JSONDecodeError) as exc:
        return 400, {"error": str(exc)}
    except KeyError as exc:
        return 404, {"error": f"not found: {exc.args[0]}"}


async def _route(c: Control, method: str, parts: list[str], query: str, body: bytes, idem: str | None):
    now = c.clock()
    head = parts[0] if parts else ""
    fp = f"{method} {'/'.join(parts)} {body!r}"
    if head == "state" and method == "GET":
        return 200, c.state_view()
    if head == "dashboard" and method == "GET":
        return 200, c.dashboard()
    if head == "campaigns":
        if len(parts) == 1 and method == "GET":
            return 200, pace_view(c.pacer, now)
        if len(parts) == 2 and method == "GET":
            return 200, c.campaign_view(parts[1])
        if len(parts) == 2 and method == "PUT":
            obj = _json(body)
            status, out = await c.idempotent(idem, fp, lambda: (200, c.put_campaign(parts[1], obj)))
            await c.save()
            return status, out
    if head == "leases" and method == "GET":
        return 200, {k: asdict(v) for k, v in c.pacer.leases.items()}
    if head == "policies":
        if len(parts) == 1 and method == "GET":
            return 200, {"policy_epoch": c.policies.epoch, "policies": c.policies.policies,
                         "base": c.base_policies}
        if len(parts) == 2 and method == "PUT":
            obj = _json(body)
            status, out = await c.idempotent(idem, fp, lambda: (200, c.set_policy(parts[1], obj)))
            await c.save()
            return status, out
    if head == "partners":
        if len(parts) == 1 and method == "GET":
            return 200, c.partners.view() | {"policy_epoch": c.policies.epoch}
        if len(parts) == 3 and method in ("PUT", "DELETE"):
            obj = _json(body) if method == "PUT" else None
            status, out = await c.idempotent(idem, fp, lambda: (200, c.pin_partner(parts[1], parts[2], obj)))
            await c.save()
            return status, out
    if head == "rollouts":
        if parts[1:] == ["thresholds"] and method == "GET":
            return 200, c.thresholds.to_dict()
        if parts[1:] == ["thresholds"] and method == "PUT":
            obj = _json(body)
            status, out = await c.idempotent(idem, fp, lambda: (200, c.set_thresholds(obj)))
            await c.save()
            return status, out
        if len(parts) == 1 and method == "GET":
            return 200, {k: r.to_dict() for k, r in c.rollouts.items()}
        if len(parts) == 1 and method == "POST":
            obj = _json(body)
            version = obj.get("version")
            if not isinstance(version, str) or not version:
                raise ValueError("version is required")

            def start():
                try:
                    return 201, c.start_rollout(version, obj.get("baseline") or c.current or c.reported_model).to_dict()
                except ValueError as exc:
                    return 409, {"error": str(exc)}
            status, out = await c.idempotent(idem, fp, start)
            await c.save()
            return status, out
        if len(parts) == 3 and parts[2] == "abort" and method == "POST":
            obj = _json(body)
            if parts[1] not in c.rollouts:
                raise KeyError(parts[1])
            status, out = await c.idempotent(
                idem, fp, lambda: (200, c.abort_rollout(parts[1], str(obj.get("reason", "aborted by operator"))).to_dict()))
            await c.save()
            return status, out
    if head == "health" and method == "GET":
        return 200, c.health.view(now)
    if head == "regions" and len(parts) == 3:
        region = parts[1]
        if region not in c.config.regions:
            raise KeyError(region)
        if parts[2] == "sync" and method == "POST":
            report = decode_report(body)
            if report.region != region:
                raise ValueError("the report's region does not match the path")
            return 200, msgspec.to_builtins(await c.sync(report))
        if parts[2] == "watch" and method == "GET":
            q = parse_qs(query)
            epoch = int(q.get("epoch", ["0"])[0])
            wait = min(30.0, max(0.0, float(q.get("wait", ["10"])[0])))
            return 200, msgspec.to_builtins(await c.watch(epoch, wait))
    return 404 if method in ("GET", "HEAD") else 405, {"error": f"no route {method} /v1/{'/'.join(parts)}"}
