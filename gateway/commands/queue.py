"""``gateway queue list | show | retry | delete | purge``: the operator's view of the spool."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from gateway.commands.context import load, utc, with_store
from gateway.config import Config, store_location
from gateway.durations import format_duration, parse_duration
from gateway.message import Delivery, DeliveryStatus, Message
from gateway.store.base import DeliveryFilter, Store

UNFINISHED = [s for s in DeliveryStatus if not s.is_terminal]


def add_commands(commands: Any) -> None:
    """Register ``queue`` and its subcommands on the CLI's subparsers."""
    queue = commands.add_parser("queue", help="inspect and act on the delivery queue")
    queue_commands = queue.add_subparsers(dest="queue_command", required=True)

    listing = queue_commands.add_parser(
        "list", help="messages with unfinished deliveries, oldest first (like postqueue -p)"
    )
    _filters(listing)
    listing.add_argument(
        "--all", action="store_true", help="also show finished deliveries (delivered, bounced…)"
    )
    listing.add_argument(
        "--limit", type=int, default=100, help="at most this many deliveries (default 100)"
    )
    listing.add_argument(
        "--json", action="store_true", help="one JSON object per message and line (postqueue -j)"
    )
    listing.set_defaults(func=cmd_list)

    show = queue_commands.add_parser("show", help="one message: deliveries and every attempt")
    show.add_argument("message_id", help="a message id, as `queue list` prints it")
    show.add_argument("--raw", action="store_true", help="also print the stored message")
    show.set_defaults(func=cmd_show)

    for name, func, text in (
        ("retry", cmd_retry, "make matching deliveries due now (bounced/expired too)"),
        ("delete", cmd_delete, "remove matching deliveries for good"),
    ):
        sub = queue_commands.add_parser(name, help=text)
        _filters(sub)
        sub.add_argument("--all", action="store_true", help="every delivery")
        sub.set_defaults(func=func)

    purge = queue_commands.add_parser(
        "purge", help="remove old messages whose deliveries are all final (store.retention)"
    )
    purge.add_argument(
        "--older-than", metavar="DURATION", help="instead of store.retention, e.g. 7d"
    )
    purge.set_defaults(func=cmd_purge)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "message_id", nargs="?", help="only this message (an id `queue list` prints)"
    )
    parser.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in DeliveryStatus],
        help="only deliveries in this state; repeat for several",
    )
    parser.add_argument("--recipient", help="only this recipient address (any case)")
    parser.add_argument("--domain", help="only recipients at this domain")


def _filter(args: argparse.Namespace, limit: int | None = None) -> DeliveryFilter:
    statuses = [DeliveryStatus(s) for s in args.status] if args.status else None
    return DeliveryFilter(
        message_id=args.message_id,
        statuses=statuses,
        recipient=args.recipient,
        domain=args.domain,
        limit=limit if limit is not None else args.limit,
    )


def _spool_is_missing(config: Config) -> bool:
    """An SQLite spool that was never created (reading it must not create it)."""
    if config.store.backend == "redis":
        return False
    return not any(config.spool_dir.glob("shard-*.db"))


def _run(config: Config, work: Any) -> int:
    result: int = asyncio.run(with_store(config, work))
    return result


def cmd_list(args: argparse.Namespace) -> int:
    config = load(args)
    where = store_location(config)
    if _spool_is_missing(config):
        print(f"no spool at {where}: nothing was accepted with this configuration", file=sys.stderr)
        return 1
    selection = _filter(args)
    if selection.statuses is None and not args.all:
        selection.statuses = UNFINISHED

    async def work(store: Store) -> int:
        deliveries = await store.list_deliveries(selection)
        by_message: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_message.setdefault(d.message_id, []).append(d)
        messages = [m for mid in by_message if (m := await store.get_message(mid)) is not None]
        messages.sort(key=lambda m: m.created_at)
        if args.json:
            for message in messages:
                print(json.dumps(_as_json(message, by_message[message.id])))
        else:
            _print_table(messages, by_message, where, args.all or bool(args.status))
        return 0

    return _run(config, work)


def _as_json(message: Message, deliveries: Sequence[Delivery]) -> dict[str, Any]:
    """postqueue -j's fields where they have a meaning here, plus each delivery's state."""
    return {
        "queue_id": message.id,
        "arrival_time": int(message.created_at),
        "message_size": len(message.raw),
        "sender": message.mail_from,
        "tenant": message.tenant,
        "recipients": [
            {
                "address": d.recipient,
                "status": d.status.value,
                "attempts": d.attempts,
                "next_attempt_time": None if d.status.is_terminal else int(d.next_attempt_at),
                "delay_reason": d.last_error or None,
            }
            for d in deliveries
        ],
    }


def _print_table(
    messages: Sequence[Message],
    by_message: dict[str, list[Delivery]],
    where: str,
    finished_shown: bool,
) -> None:
    if not messages:
        hidden = "" if finished_shown else " (finished deliveries are hidden: --all shows them)"
        print(f"spool {where}: no deliveries match{hidden}")
        return
    print(f"{'MESSAGE':<22} {'ARRIVED (UTC)':<19} {'SIZE':>9}  SENDER")
    total_size = total_deliveries = 0
    for message in messages:
        sender = f"<{message.mail_from}>"
        print(f"{message.id:<22} {utc(message.created_at):<19} {len(message.raw):>9}  {sender}")
        for d in by_message[message.id]:
            next_at = "" if d.status.is_terminal else f", next {utc(d.next_attempt_at)}"
            print(f"    {d.status.value:<9} {d.recipient}  ({d.attempts} tries{next_at})")
            if d.last_error:
                print(f"              {d.last_error[:200]}")
        total_size += len(message.raw)
        total_deliveries += len(by_message[message.id])
    print(
        f"-- {len(messages)} message(s), {total_deliveries} delivery(ies), "
        f"{total_size} bytes, in spool {where}"
    )


def cmd_show(args: argparse.Namespace) -> int:
    config = load(args)

    async def work(store: Store) -> int:
        message = await store.get_message(args.message_id)
        if message is None:
            print(f"no message {args.message_id} in {store_location(config)}", file=sys.stderr)
            return 1
        print(f"message    {message.id}")
        print(f"tenant     {message.tenant}")
        print(f"source     {message.source}")
        print(f"from       <{message.mail_from}>")
        print(f"received   {utc(message.created_at)} UTC")
        print(f"size       {len(message.raw)} bytes")
        deliveries = await store.list_deliveries(
            DeliveryFilter(message_id=message.id, limit=10_000)
        )
        for d in deliveries:
            print(f"\n  to <{d.recipient}>: {d.status.value}, {d.attempts} attempt(s)")
            if not d.status.is_terminal:
                print(
                    f"    next attempt {utc(d.next_attempt_at)} UTC, "
                    f"expires {utc(d.expires_at)} UTC"
                )
            if d.last_error:
                print(f"    last error: {d.last_error}")
            for a in await store.attempts(d):
                print(f"    {utc(a.at)}  {a.provider:<10} {a.outcome:<9} {a.detail}")
        if args.raw:
            print()
            sys.stdout.flush()
            sys.stdout.buffer.write(message.raw)
        return 0

    return _run(config, work)


def _require_selection(args: argparse.Namespace) -> None:
    if not (args.message_id or args.status or args.recipient or args.domain or args.all):
        raise SystemExit(
            "name a message id, or filter with --status/--recipient/--domain, or pass --all"
        )


def cmd_retry(args: argparse.Namespace) -> int:
    _require_selection(args)
    config = load(args)

    async def work(store: Store) -> int:
        count = await store.retry_now(_filter(args, limit=1_000_000), time.time())
        print(f"{count} deliveries will be retried now")
        return 0

    return _run(config, work)


def cmd_delete(args: argparse.Namespace) -> int:
    _require_selection(args)
    config = load(args)

    async def work(store: Store) -> int:
        count = await store.delete(_filter(args, limit=1_000_000))
        print(f"{count} deliveries deleted")
        return 0

    return _run(config, work)


def cmd_purge(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        older_than = (
            parse_duration(args.older_than) if args.older_than else config.store.retention_seconds
        )
    except ValueError as e:
        raise SystemExit(f"--older-than: {e}") from None
    if older_than is None:
        raise SystemExit("store.retention is 'forever': give --older-than (e.g. 30d)")
    from gateway.clock import SystemClock
    from gateway.retention import purge_old_messages

    async def work(store: Store) -> int:
        count = await purge_old_messages(store, SystemClock(), older_than)
        print(
            f"{count} messages removed (accepted over {format_duration(older_than)} ago,"
            " every delivery final)"
        )
        return 0

    return _run(config, work)
