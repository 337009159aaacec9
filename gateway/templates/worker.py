"""The render worker process: compiles a job's templates once, renders one recipient after
another under the limits, answers one frame per recipient.

Limits are the process's own: ``RLIMIT_AS`` caps memory (an allocation past it is a
``MemoryError``), a ``SIGPROF`` interval timer (CPU time, not wall time) interrupts a render
that runs too long, and output is counted as it is generated. It runs at normal priority (niced,
renders starved behind a busy gateway and batch throughput fell by half). It exits at the end
of its stdin, i.e. when the gateway closes the pipe or dies.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import resource
import signal
import sys
import time
from types import FrameType
from typing import Any, BinaryIO

import msgspec
from jinja2 import Template

from gateway.templates.limits import RenderLimits, TemplateError
from gateway.templates.protocol import HEADER, Failure, Rendered, RenderJob, TemplateSource, frame
from gateway.templates.sandbox import LimitBreach, LimitedEnvironment, compile_template, render

FLUSH_EVERY = 0.02
"""Seconds of rendering after which results written so far are sent on."""
COMPILED_CACHE = 32
"""Compiled template sets kept per worker (a batch is split in jobs that reuse them)."""


def _on_cpu_timer(signum: int, frame: FrameType | None) -> None:
    raise LimitBreach("cpu_time")


class Renderer:
    """Compiled templates (by content) and the limits every render runs under."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.environments = {
            html: LimitedEnvironment(html=html, max_output=limits.output_size)
            for html in (False, True)
        }
        self.compiled: collections.OrderedDict[bytes, list[tuple[str, Template]]] = (
            collections.OrderedDict()
        )

    def run(self, job: RenderJob, out: BinaryIO) -> None:
        try:
            templates = self._limited(functools.partial(self._compile, job.templates))
        except TemplateError as e:
            out.write(frame([Rendered(failure=Failure(e.kind, e.field, e.detail, e.limit))]))
            out.flush()
            return
        # Results go out in groups, one frame each: the event loop wakes and decodes once per
        # group, and its deadline only needs to see progress every so often.
        group: list[Rendered] = []
        started = time.monotonic()
        for variables in job.variables:
            result = self._render_one(templates, variables)
            group.append(result)
            if result.failure is not None and result.failure.kind == "limit":
                break
            if time.monotonic() - started >= FLUSH_EVERY:
                out.write(frame(group))
                out.flush()
                group, started = [], time.monotonic()
        if group:
            out.write(frame(group))
        out.flush()

    def _render_one(
        self, templates: list[tuple[str, Template]], variables: dict[str, Any]
    ) -> Rendered:
        fields: dict[str, str] = {}
        for field, template in templates:
            try:
                fields[field] = self._limited(
                    functools.partial(render, template, field, variables, self.limits.output_size),
                    field,
                )
            except TemplateError as e:
                return Rendered(failure=Failure(e.kind, e.field, e.detail, e.limit))
        return Rendered(fields=fields)

    def _compile(self, sources: tuple[TemplateSource, ...]) -> list[tuple[str, Template]]:
        key = hashlib.sha256(msgspec.msgpack.encode(sources)).digest()
        found = self.compiled.get(key)
        if found is None:
            found = [
                (s.field, compile_template(self.environments[s.html], s.field, s.source))
                for s in sources
            ]
            self.compiled[key] = found
            if len(self.compiled) > COMPILED_CACHE:
                self.compiled.popitem(last=False)
        else:
            self.compiled.move_to_end(key)
        return found

    def _limited(self, work: Any, field: str = "") -> Any:
        """``work()`` under the CPU timer; a broken limit becomes a ``limit`` TemplateError."""
        limits = self.limits
        try:
            signal.setitimer(signal.ITIMER_PROF, limits.cpu_time)
            try:
                return work()
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
        except LimitBreach as e:
            raise TemplateError("limit", field, _exceeded(limits, e.limit), e.limit) from None
        except MemoryError:
            raise TemplateError("limit", field, _exceeded(limits, "memory"), "memory") from None
        except RecursionError:
            raise TemplateError(
                "render" if field else "compile", field, "template nested too deeply"
            ) from None


def _exceeded(limits: RenderLimits, limit: Any) -> str:
    return f"the template exceeded the {limits.describe(limit)} limit"


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def main() -> None:
    limits = msgspec.json.decode(sys.argv[1], type=RenderLimits)
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGPROF, _on_cpu_timer)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops us; Ctrl-C is for it
    renderer = Renderer(limits)
    decoder = msgspec.msgpack.Decoder(RenderJob)
    source, out = (
        sys.stdin.buffer,
        open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False),
    )
    while (header := _read_exactly(source, HEADER)) is not None:
        body = _read_exactly(source, int.from_bytes(header, "big"))
        if body is None:
            break
        renderer.run(decoder.decode(body), out)


if __name__ == "__main__":
    main()
