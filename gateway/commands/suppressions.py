"""``gateway suppressions list | add | remove``: a tenant's suppression list from a shell,
scopes included (``tenant`` or ``stream:<name>``), on whichever store the config names."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, get_args

from gateway.commands.context import load, utc, with_store
from gateway.store.base import TENANT_SCOPE, Store, Suppression, SuppressionReason, is_scope


def _scope(value: str) -> str:
    if not is_scope(value):
        raise argparse.ArgumentTypeError("'tenant' or 'stream:<name>'")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> list[Suppression]:
        return await store.list_suppressions(
            args.tenant, reason=args.reason, scope=args.scope, limit=args.limit
        )

    for e in asyncio.run(with_store(load(args), work)):
        print(f"{e.address}\t{e.scope}\t{e.reason}\t{utc(e.created_at)}\t{e.detail}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    entry = Suppression(
        tenant=args.tenant,
        address=args.email,
        reason=args.reason or "manual",
        created_at=time.time(),
        detail=args.detail,
        scope=args.scope or TENANT_SCOPE,
    )
    asyncio.run(with_store(load(args), lambda store: store.add_suppressions([entry])))
    print(f"suppressed {entry.address} for {args.tenant} ({entry.scope}, {entry.reason})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    removed = asyncio.run(
        with_store(
            load(args), lambda store: store.remove_suppression(args.tenant, args.email, args.scope)
        )
    )
    if not removed:
        print(f"{args.email} is not suppressed", file=sys.stderr)
        return 1
    print(f"removed {args.email} ({args.scope or 'every scope'})")
    return 0


def add_commands(commands: Any) -> None:
    """Add ``suppressions`` to the ``gateway`` command's subparsers."""
    parser = commands.add_parser("suppressions", help="a tenant's suppression list, by scope")
    sub = parser.add_subparsers(dest="suppressions_command", required=True)
    reasons = get_args(SuppressionReason)
    listing = sub.add_parser("list", help="entries by address: address, scope, reason, time")
    listing.add_argument("--tenant", required=True, help="whose list")
    listing.add_argument("--scope", type=_scope, help="only this scope")
    listing.add_argument("--reason", choices=reasons, help="only this reason")
    listing.add_argument("--limit", type=int, default=1000, help="most entries to print")
    listing.set_defaults(func=cmd_list)
    add = sub.add_parser("add", help="add or replace an entry")
    add.add_argument("email", help="the address to suppress")
    add.add_argument("--tenant", required=True, help="whose list")
    add.add_argument("--scope", type=_scope, help="default: tenant (every stream)")
    add.add_argument("--reason", choices=reasons, help="default: manual")
    add.add_argument("--detail", default="", help="a note kept with the entry")
    add.set_defaults(func=cmd_add)
    remove = sub.add_parser("remove", help="remove an address (one scope with --scope)")
    remove.add_argument("email", help="the address to remove")
    remove.add_argument("--tenant", required=True, help="whose list")
    remove.add_argument("--scope", type=_scope, help="only this scope (default: every one)")
    remove.set_defaults(func=cmd_remove)
