"""The control API's bearer token: ``FLEET_CONTROL_TOKEN``, else ``.fleet/control_token``
(made once, mode 600). Never in code or config; compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fleet.secretfile import read_or_create

TOKEN_FILE = Path(__file__).resolve().parents[2] / ".fleet" / "control_token"


def load_token() -> str:
    tok = os.environ.get("FLEET_CONTROL_TOKEN", "").strip()
    if tok:
        return tok
    return read_or_create(TOKEN_FILE, lambda: secrets.token_urlsafe(32))


def authorized(header: str | None, token: str) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
