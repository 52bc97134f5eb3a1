"""Small helpers for tests that start real servers and processes on 127.0.0.1."""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    """A port nothing listens on right now (for a server started in a subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def modelgate(*args: str) -> list[str]:
    """argv running the ``modelgate`` CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "modelgate", *args]
