"""The control API's bearer token: ``FLEET_CONTROL_TOKEN``, else ``.fleet/control_token``
(made once, mode 600). Never in code or config; compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = Path(__file__).resolve().parents[2] / ".fleet" / "control_token"


def load_token() -> str:
    tok = os.environ.get("FLEET_CONTROL_TOKEN", "").strip()
    if tok:
        return tok
    if not TOKEN_FILE.exists():
        TOKEN_FILE.parent.mkdir(exist_ok=True)
        tmp = TOKEN_FILE.with_name(f"control_token.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, TOKEN_FILE)  # replicas starting together all read one token
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return TOKEN_FILE.read_text().strip()


def authorized(header: str | None, token: str) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
