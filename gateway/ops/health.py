"""Liveness and readiness: ``/healthz`` says the process answers; ``/readyz`` says whether it
should be sent work, check by check, each with a detail an operator can act on.

Readiness checks (all must pass):

``spool``     the spool directory takes a small write and fsync (disk full, read-only mount)
``store``     the store answers a cheap query within the timeout (SQLite file, Redis server)
``persistence`` the store's persistence mode, in words; fails only for a Redis without
              persistence (``appendonly no``) that ``store.allow_volatile`` did not allow
``routes``    at least one provider of the route is not behind an open circuit breaker
``listeners`` every SMTP listener (and the HTTP server, when on) is bound and serving
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from gateway.ops.metrics import breaker_states

CHECK_TIMEOUT = 2.0
"""Seconds a check may take before it counts as failed."""


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str
    duration_ms: float = 0.0


class Readiness(msgspec.Struct, kw_only=True):
    ready: bool
    checks: list[Check]


async def readiness(gateway: Any, limit: float = CHECK_TIMEOUT) -> Readiness:
    """Run every readiness check (concurrently, each bounded by ``limit`` seconds)."""
    checks = await asyncio.gather(
        _timed("spool", lambda: check_spool(gateway.config.spool_dir), limit),
        _timed("store", lambda: check_store(gateway.store), limit),
        _timed("persistence", lambda: gateway.store.durability(), limit),
        _timed("routes", lambda: check_routes(gateway), limit),
        _timed("listeners", lambda: check_listeners(gateway), limit),
    )
    return Readiness(ready=all(c.ok for c in checks), checks=list(checks))


async def _timed(name: str, run: Any, limit: float) -> Check:
    started = time.perf_counter()
    try:
        ok, detail = await asyncio.wait_for(run(), limit)
    except TimeoutError:
        ok, detail = False, f"no answer within {limit:g}s"
    except Exception as e:
        ok, detail = False, f"{type(e).__name__}: {e}"
    return Check(
        name=name,
        ok=ok,
        detail=detail,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )


async def check_spool(directory: Path) -> tuple[bool, str]:
    def probe() -> tuple[bool, str]:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f".ready-{os.getpid()}"
        try:
            with open(path, "wb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            return False, f"cannot write in {directory}: {e.strerror}"
        finally:
            path.unlink(missing_ok=True)
        return True, f"{directory} is writable"

    return await asyncio.to_thread(probe)


async def check_store(store: Any) -> tuple[bool, str]:
    await store.ping()
    return True, f"{type(store).__name__} answers"


async def check_routes(gateway: Any) -> tuple[bool, str]:
    states = breaker_states(gateway)
    route = [p for p in gateway.config.delivery.providers if p in states] or list(states)
    available = [p for p in route if states.get(p) != "open"]
    described = ", ".join(f"{p}={states.get(p, 'closed')}" for p in route)
    if not available:
        return False, f"every route has an open breaker ({described})"
    return True, f"{len(available)} of {len(route)} routes available ({described})"


async def check_listeners(gateway: Any) -> tuple[bool, str]:
    expected = [listener.name for listener in gateway.config.smtp.listeners]
    down = [n for n in expected if n not in gateway.servers or not gateway.servers[n].is_serving()]
    parts = [f"smtp {n}:{p}" for n, p in gateway.smtp_ports.items() if n not in down]
    if gateway.config.http.enabled:
        if gateway.http is None:
            down.append("http")
        else:
            parts.append(f"http:{gateway.http.port}")
    if down:
        return False, "not serving: " + ", ".join(down)
    return True, "serving " + ", ".join(parts)
