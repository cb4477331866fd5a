"""The tolerant reading of a request the strict decoder refused: coerce, drop, count, go on.

Real exchanges send optional fields of the wrong shape (``user.data[].segment`` as an object,
``regs.ext.gdpr`` as ``"1"``, numbers as strings, ``null`` for an optional array). OpenRTB asks
bidders to be tolerant, and a 400 costs the whole request, so the codec's strict decode (the fast
path) falls back to this pass only when it fails: the body is read as plain JSON and walked once
against the wire model (``fleet.openrtb.model``, read through ``msgspec.inspect``, so a field
added there is walked without a change here), then converted strictly.

Per field, in order:
- a value of the right type is kept;
- a common confusion is coerced: a number written as a string (``"1"``, ``"1.5"``), a bool or an
  integral float where an int belongs, a number where a string belongs (ids), one item where a
  list belongs (``segment: {...}`` is a list of one);
- anything else is dropped (the field takes its default), except the privacy and auction flags in
  ``FAIL_SAFE``, which take their restrictive value: an unreadable ``coppa`` is read as 1;
- an unreadable list item is dropped from its list.
Each coercion and drop is reported by field path (``imp[].banner.format[].w``), and the bidder
counts them on ``/stats`` (``tolerated.coerced.<path>``, ``tolerated.dropped.<path>``).

What the bidder cannot do without is ``Unreadable`` (a 400): the request's ``id``, its ``imp``
list and each imp's ``id``. An imp whose floor cannot be read (``bidfloor``, ``bidfloorcur``) is
dropped whole rather than bid at a floor it did not state; likewise a deal. Which imps are left
to bid on is the codec's (``fleet.openrtb.codec.validate``).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from msgspec import inspect as mi

# Without these the request cannot be answered at all: 400.
REQUIRED = frozenset({"id", "imp", "imp[].id"})
# A bad value here makes the object holding it unreadable (dropped from its list), not just the field.
HOLDS_ITS_OBJECT = frozenset({"imp[].bidfloor", "imp[].bidfloorcur",
                              "imp[].pmp.deals[].bidfloor", "imp[].pmp.deals[].bidfloorcur"})
# An unreadable flag takes its restrictive value, not the spec's default: an unreadable COPPA,
# GDPR or LMT/DNT flag limits the request to contextual data; an unreadable auction type is read
# as first price (the rule shades its bid).
FAIL_SAFE: dict[str, Any] = {"regs.coppa": 1, "regs.gdpr": 1, "regs.ext.gdpr": 1,
                             "device.lmt": 1, "device.dnt": 1, "at": 1}

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_BAD = object()


class Unreadable(Exception):
    """A field the bidder cannot do without is missing or unreadable."""

    def __init__(self, path: str):
        super().__init__(f"{path} missing or unreadable")
        self.path = path


# -- the model as a walkable schema -------------------------------------------------------
# node: ("int"|"float"|"str"|"bool"|"dict"|"any",) | ("list", node) | ("union", (node, ...)) |
# ("struct", {wire name: (node, required, nullable)}); a union of one type and null is that type,
# nullable.


def _node(t: mi.Type) -> tuple:
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return _node(rest[0]) if len(rest) == 1 else ("union", tuple(_node(x) for x in rest))
    if isinstance(t, mi.IntType):
        return ("int",)
    if isinstance(t, mi.FloatType):
        return ("float",)
    if isinstance(t, mi.StrType):
        return ("str",)
    if isinstance(t, mi.BoolType):
        return ("bool",)
    if isinstance(t, (mi.ListType, mi.FrozenSetType, mi.SetType, mi.VarTupleType)):
        return ("list", _node(t.item_type))
    if isinstance(t, mi.DictType):
        return ("dict",)
    if isinstance(t, mi.StructType):
        fields = {}
        for f in t.fields:
            nullable = isinstance(f.type, mi.UnionType) and any(isinstance(x, mi.NoneType) for x in f.type.types)
            fields[f.encode_name] = (_node(f.type), f.required, nullable)
        return ("struct", fields)
    return ("any",)


_schemas: dict[type, tuple] = {}


def schema(cls: type) -> tuple:
    if cls not in _schemas:
        _schemas[cls] = _node(mi.type_info(cls))
    return _schemas[cls]


# -- the walk ----------------------------------------------------------------------------------


class Repairs(list):
    """(action, path) per repair, action "coerced" or "dropped"."""


def _int(v: Any) -> Any:
    t = type(v)
    if t is int:
        return v if _INT_MIN <= v <= _INT_MAX else _BAD
    if t is bool:
        return int(v)
    if t is float:
        return int(v) if math.isfinite(v) and v.is_integer() and _INT_MIN <= v <= _INT_MAX else _BAD
    if t is str:
        s = v.strip()
        try:
            return _int(int(s))
        except ValueError:
            try:
                return _int(float(s))
            except ValueError:
                return _BAD
    return _BAD


def _float(v: Any) -> Any:
    t = type(v)
    if t is float:
        return v
    if t is int:  # JSON's 1 for 1.0: kept as it is (msgspec reads it), unless a double cannot hold it
        return v if -(2**1023) < v < 2**1023 else _BAD
    if t is str:
        try:
            f = float(v.strip())
        except ValueError:
            return _BAD
        return f if math.isfinite(f) else _BAD
    return _BAD


def _str(v: Any) -> Any:
    t = type(v)
    if t is str:
        return v
    if t is int:
        return str(v)
    if t is float and math.isfinite(v):
        return str(int(v)) if v.is_integer() else repr(v)
    return _BAD


def _bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    if type(v) is int and v in (0, 1):
        return bool(v)
    return _BAD


_SCALARS = {"int": _int, "float": _float, "str": _str, "bool": _bool}


_EXACT = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list, "struct": dict}


def _fix(v: Any, node: tuple, path: str, log: Repairs) -> Any:
    kind = node[0]
    if kind == "any":
        return v
    if kind == "dict":
        return v if type(v) is dict else _BAD
    if kind == "union":  # a value of one of its types as it is, else the first coercion that works
        for sub in node[1]:
            if type(v) is _EXACT.get(sub[0]):
                return _fix(v, sub, path, log)
        for sub in node[1]:
            out = _fix(v, sub, path, log)
            if out is not _BAD:
                return out
        return _BAD
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        out = scalar(v)
        if out is not _BAD and (type(out) is not type(v) or out != v):
            log.append(("coerced", path))
        return out
    if kind == "list":
        item, ipath = node[1], path + "[]"
        if type(v) is not list:
            if v is None:
                return _BAD
            one = _fix(v, item, ipath, log)  # one item where a list belongs
            if one is _BAD:
                return _BAD
            log.append(("coerced", path))
            return [one]
        out, changed = [], False
        for x in v:
            y = _fix(x, item, ipath, log)
            if y is _BAD:
                log.append(("dropped", ipath))
                changed = True
            else:
                out.append(y)
                changed |= y is not x
        return out if changed else v
    # struct
    if type(v) is not dict:
        return _BAD
    prefix = path + "." if path else ""
    for key, (fnode, required, nullable) in node[1].items():
        if key not in v:
            if required:
                if prefix + key in REQUIRED:
                    raise Unreadable(prefix + key)
                return _BAD
            continue
        x = v[key]
        fpath = prefix + key
        y = _BAD if x is None and not nullable else (x if x is None else _fix(x, fnode, fpath, log))
        if y is _BAD:
            if fpath in REQUIRED:
                raise Unreadable(fpath)
            if required or fpath in HOLDS_ITS_OBJECT:
                log.append(("dropped", fpath))
                return _BAD
            log.append(("dropped", fpath))
            if fpath in FAIL_SAFE:
                v[key] = FAIL_SAFE[fpath]
            else:
                del v[key]
        elif y is not x:
            v[key] = y
    return v


def repair(body: bytes, cls: type) -> tuple[Any, Repairs]:
    """The request read tolerantly: ``(struct, repairs)``. Raises ``Unreadable`` (a 400), and
    msgspec's ``DecodeError`` for a body that is not JSON at all."""
    raw = msgspec.json.decode(body)
    log = Repairs()
    if type(raw) is not dict:
        raise Unreadable("$ (the request object)")
    fixed = _fix(raw, schema(cls), "", log)
    if fixed is _BAD:  # a required field of the root that is not in REQUIRED (none today)
        raise Unreadable("$ (the request object)")
    try:
        return msgspec.convert(fixed, cls), log
    except msgspec.ValidationError as exc:  # a shape the walk does not know: say where
        raise Unreadable(f"{exc}") from None
