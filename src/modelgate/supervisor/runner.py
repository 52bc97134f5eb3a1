"""The seam between a supervised endpoint and what runs it: a process or a container."""

from __future__ import annotations

from typing import Protocol


class Runner(Protocol):
    """Runs one child at a time.  ``start`` may be called again after the child is gone."""

    kind: str

    @property
    def ident(self) -> str | None:
        """pid or container id of the current child, None when none runs."""
        ...

    async def start(self) -> str:
        """Launch the child; return its ident.  Raises a SupervisorError subclass."""
        ...

    async def wait(self) -> int | None:
        """Return the exit code once the child has exited (None if unknown)."""
        ...

    async def stop(self, timeout_s: float) -> int | None:
        """Stop the child (graceful, then forced after ``timeout_s``) and release it."""
        ...

    async def logs(self, lines: int) -> list[str]:
        """The child's last output lines (kept after it exits, until the next start)."""
        ...
