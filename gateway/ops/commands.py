"""``gateway status`` and ``gateway webhooks …``: the operator's view from a shell."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.commands.context import load, utc, with_store
from gateway.config import Config
from gateway.store.base import Store

T = TypeVar("T")


def _with_store(config: Config, work: Callable[[Store], Awaitable[T]]) -> T:
    return asyncio.run(with_store(config, work))


# --- gateway status ---------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Readiness of the running gateway (its /readyz), and the queue as the store holds it."""
    import httpx

    config = load(args)
    ready = False
    if config.http.enabled:
        host = "127.0.0.1" if config.http.address in ("0.0.0.0", "") else config.http.address
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        url = f"http://{host}:{config.http.port}/readyz"
        try:
            answer = httpx.get(url, timeout=args.timeout, trust_env=False)
            body = answer.json()
        except (httpx.HTTPError, ValueError) as e:
            print(f"gateway      not reachable at {url}: {e}")
        else:
            ready = bool(body.get("ready"))
            print(f"gateway      {'READY' if ready else 'NOT READY'} ({url})")
            for check in body.get("checks", []):
                mark = "ok  " if check["ok"] else "FAIL"
                print(f"  {mark} {check['name']:<10} {check['detail']}")
    else:
        print("gateway      [http] is off: no /readyz to ask; showing the store only")

    async def queue(store: Store) -> tuple[dict[str, int], float | None, dict[str, int]]:
        counts = {s.value: n for s, n in (await store.counts()).items()}
        webhooks = {str(s): n for s, n in (await store.webhook_counts()).items()}
        return counts, await store.oldest_waiting(), webhooks

    try:
        counts, oldest, webhooks = _with_store(config, queue)
    except Exception as e:
        print(f"store        FAIL {type(e).__name__}: {e}")
        return 1
    print("queue        " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    age = f"{time.time() - oldest:.0f}s" if oldest is not None else "-"
    print(f"oldest       {age}")
    print("webhooks     " + ", ".join(f"{s} {n}" for s, n in webhooks.items()))
    return 0 if ready or not config.http.enabled else 1


# --- gateway webhooks ---------------------------------------------------------------------------


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    config = load(args)
    events = _with_store(
        config,
        lambda store: store.list_webhook_events(
            args.tenant, status=args.status, endpoint=args.endpoint, limit=args.limit
        ),
    )
    if not events:
        print("no webhook events match")
        return 0
    print(f"{'ID':<28} {'STATUS':<9} {'TRIES':>5} {'CREATED':<19} TENANT/ENDPOINT TYPE")
    for e in events:
        print(
            f"{e.id:<28} {e.status:<9} {e.attempts:>5} {utc(e.created_at):<19} "
            f"{e.tenant}/{e.endpoint} {e.type}"
        )
        if e.last_error:
            print(f"{'':>29}{e.last_error[:200]}")
    return 0


def cmd_webhooks_show(args: argparse.Namespace) -> int:
    config = load(args)
    found = _with_store(config, lambda store: store.webhook_event(args.event_id))
    if found is None:
        print(f"no webhook event {args.event_id}", file=sys.stderr)
        return 1
    event, log = found
    print(f"event      {event.id}")
    print(f"endpoint   {event.tenant}/{event.endpoint}")
    print(f"type       {event.type}")
    print(f"status     {event.status} after {event.attempts} attempt(s)")
    if event.status == "pending":
        print(f"next       {utc(event.next_attempt_at)} UTC")
    print(f"body       {json.dumps(json.loads(event.payload))}")
    for a in log:
        code = a.status_code or "-"
        print(f"  {utc(a.at)}  {code!s:>4} {a.outcome:<9} {a.duration * 1000:7.1f} ms  {a.detail}")
    return 0


def cmd_webhooks_replay(args: argparse.Namespace) -> int:
    config = load(args)
    replayed = _with_store(config, lambda store: store.replay_webhook(args.event_id, time.time()))
    if replayed is None:
        print(f"no webhook event {args.event_id}", file=sys.stderr)
        return 1
    print(f"{replayed.id} will be sent again to {replayed.tenant}/{replayed.endpoint}")
    return 0


def cmd_webhooks_secret(args: argparse.Namespace) -> int:
    print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    return 0


def add_commands(commands: Any) -> None:
    """Add ``status`` and ``webhooks`` to the ``gateway`` command's subparsers."""
    status = commands.add_parser(
        "status", help="readiness of the running gateway, queue and webhook counts"
    )
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for /readyz")
    status.set_defaults(func=cmd_status)

    webhooks = commands.add_parser("webhooks", help="event webhooks to senders: log and replay")
    sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    listing = sub.add_parser("list", help="webhook events, newest first")
    listing.add_argument("--tenant", help="only this tenant's events")
    listing.add_argument("--endpoint", help="only this endpoint (its name)")
    listing.add_argument(
        "--status", choices=["pending", "delivered", "failed"], help="only events in this state"
    )
    listing.add_argument("--limit", type=int, default=50, help="newest this many (default 50)")
    listing.set_defaults(func=cmd_webhooks_list)
    show = sub.add_parser("show", help="one event: its body and every attempt")
    show.add_argument("event_id", help="an event id, as `webhooks list` prints it")
    show.set_defaults(func=cmd_webhooks_show)
    replay = sub.add_parser("replay", help="send an event again (its log is kept)")
    replay.add_argument("event_id", help="an event id, as `webhooks list` prints it")
    replay.set_defaults(func=cmd_webhooks_replay)
    secret = sub.add_parser("secret", help="make a new endpoint secret (whsec_…)")
    secret.set_defaults(func=cmd_webhooks_secret)
