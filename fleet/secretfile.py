"""Secrets kept in a file of their own under ``.fleet/``: created once, mode 600, never in code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The file's content; made with ``make()`` first if it does not exist. Written aside, then
    linked into place: replicas starting together all read the one value that won."""
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
