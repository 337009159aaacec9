"""The limits one render runs under, and the error that names the one a template broke."""

from __future__ import annotations

from typing import Literal

import msgspec

LimitName = Literal["cpu_time", "memory", "output_size"]


class RenderLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Per render (one template field for one recipient); enforced in the worker process."""

    cpu_time: float = 1.0
    """CPU seconds (the process's own CPU time, not wall time)."""
    memory: int = 256 * 1024 * 1024
    """Bytes of address space of a worker process (``RLIMIT_AS``), interpreter included."""
    output_size: int = 5 * 1024 * 1024
    """Characters one rendered field may have."""

    def describe(self, limit: LimitName) -> str:
        """``limit`` with its configured value, for a client to read."""
        if limit == "cpu_time":
            return f"cpu_time ({self.cpu_time:g} s of CPU per render)"
        if limit == "memory":
            return f"memory ({self.memory // (1024 * 1024)} MiB per renderer)"
        return f"output_size ({self.output_size} characters per rendered field)"


class TemplateError(Exception):
    """A template (``field``) failed: ``kind`` is ``compile`` (refused before rendering),
    ``render`` (this recipient's variables do not fit) or ``limit`` (``limit`` names which)."""

    def __init__(
        self,
        kind: Literal["compile", "render", "limit"],
        field: str,
        detail: str,
        limit: LimitName | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.field = field
        self.detail = detail
        self.limit = limit
