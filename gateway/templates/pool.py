"""The event loop's side of rendering: a bounded pool of render worker processes.

At most ``size`` workers exist; each is started when first needed and reused, one job at a
time. A job waits for a free worker, so hostile templates can occupy the pool but never the
event loop. Every render has a wall-clock deadline on top of the worker's own CPU timer, for
anything that never returns to the interpreter: a worker past it, or one that dies, is killed
(by its PID) and replaced by the next job that needs one, and the render counts as having
broken a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

import gateway
from gateway.templates.limits import LimitName, RenderLimits
from gateway.templates.protocol import (
    HEADER,
    Failure,
    Rendered,
    RenderJob,
    TemplateSource,
    frame,
)

log = logging.getLogger("gateway.templates")

WALL_FACTOR = 3.0
WALL_SLACK = 2.0
"""A render may take ``WALL_FACTOR`` times its CPU budget plus this many seconds of wall time
(a busy machine gives a niced worker less than a core) before its worker is killed."""

_ROOT = str(Path(gateway.__file__).resolve().parent.parent)
"""Where this ``gateway`` package was imported from: workers import the same code."""
_CODE = (
    "import sys; sys.path.insert(0, {root!r}); from gateway.templates.worker import main; main()"
)


class _WorkerLost(Exception):
    def __init__(self, limit: LimitName, detail: str) -> None:
        super().__init__(detail)
        self.limit: LimitName = limit
        self.detail = detail


class _Worker:
    """One render process and its pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.stdin = process.stdin
        self.stdout = process.stdout
        self._decoder = msgspec.msgpack.Decoder(list[Rendered])

    async def run(
        self, job: RenderJob, payload: bytes, per_render: float, results: list[Rendered]
    ) -> None:
        """Append one result per recipient to ``results``, stopping early where the worker
        does (a compile error or a broken limit)."""
        loop = asyncio.get_running_loop()
        self.stdin.write(payload)
        try:
            async with asyncio.timeout(loop.time() + per_render) as deadline:
                await self.stdin.drain()
                while len(results) < len(job.variables):
                    header = await self.stdout.readexactly(HEADER)
                    body = await self.stdout.readexactly(int.from_bytes(header, "big"))
                    group = self._decoder.decode(body)
                    results.extend(group)
                    last = group[-1].failure if group else None
                    if last is not None and last.kind != "render":
                        return
                    deadline.reschedule(loop.time() + per_render)
        except TimeoutError:
            raise _WorkerLost("cpu_time", "the render ran past its time") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise _WorkerLost("memory", "the renderer process died") from None

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


class RenderPool:
    """Renders template sets for lists of recipients in worker processes, under ``limits``."""

    def __init__(self, limits: RenderLimits, size: int) -> None:
        self.limits = limits
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self.lost = 0
        """Workers killed or died (a hostile template's mark)."""

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now."""
        return [w.process.pid for w in (*self._idle, *self._busy)]

    async def render(
        self, templates: Sequence[TemplateSource], variables: Sequence[dict[str, Any]]
    ) -> list[Rendered]:
        """One ``Rendered`` per recipient, in order — fewer when rendering stopped at a
        compile error or a broken limit, whose failure is then the last item."""
        job = RenderJob(templates=tuple(templates), variables=list(variables))
        try:
            payload = frame(job)
        except (UnicodeEncodeError, msgspec.EncodeError, OverflowError) as e:
            # e.g. a lone surrogate from JSON's \ud800: refused like any bad template input
            detail = f"the templates or variables cannot be rendered: {e}"
            return [Rendered(failure=Failure("compile", "recipients", detail))]
        per_render = self.limits.cpu_time * WALL_FACTOR * max(1, len(templates)) + WALL_SLACK
        results: list[Rendered] = []
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._spawn()
            self._busy.add(worker)
            try:
                await worker.run(job, payload, per_render, results)
            except _WorkerLost as e:
                self.lost += 1
                log.warning("template worker %d stopped: %s", worker.process.pid, e.detail)
                await worker.kill()
                detail = f"the template exceeded the {self.limits.describe(e.limit)} limit"
                results.append(Rendered(failure=Failure("limit", "", detail, e.limit)))
            except BaseException:
                await worker.kill()
                raise
            else:
                self._idle.append(worker)
            finally:
                self._busy.discard(worker)
        return results

    async def _spawn(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CODE.format(root=_ROOT),
            msgspec.json.encode(self.limits).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return _Worker(process)

    async def close(self) -> None:
        """Stop every worker (closing its stdin ends it; a stuck one is killed)."""
        workers, self._idle = [*self._idle, *self._busy], []
        for worker in workers:
            await worker.kill()
