"""``gateway dkim keygen|list|retire`` and ``gateway dns records|check``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from gateway.config import Config
from gateway.dkim_keys import (
    DkimKeyError,
    configured_key_dir,
    configured_keys,
    configured_selectors,
    keygen,
    retire,
)
from gateway.dnsauth.records import bind_snippet, expected_records
from gateway.dnsauth.state import verify_and_save
from gateway.dnsauth.verify import DomainReport

EXIT_UNVERIFIED = 1
EXIT_COULD_NOT_CHECK = 3
DEFAULT_SNIPPET_DIR = "dns/zones"


def _config(args: argparse.Namespace) -> Config:
    from gateway.commands.context import load

    return load(args)


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    config = _config(args)
    key_dir = configured_key_dir(config)
    try:
        key, superseded = keygen(
            key_dir,
            args.domain,
            args.selector,
            args.type,
            args.bits,
            keep_signing=args.keep_signing,
        )
    except DkimKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {key.path} ({key.type}, mode 0600); publish this TXT record:", file=sys.stderr)
    print(key.bind())
    for old in superseded:
        print(
            f"{old.selector} no longer signs; keep its record published until mail signed with "
            f"it has been delivered, then: gateway dkim retire {old.domain} --selector "
            f"{old.selector}",
            file=sys.stderr,
        )
    selectors = config.plugins.get("dkim", {}).get("selectors") or []
    if selectors and key.selector not in selectors:
        print(
            f"warning: [plugins.dkim] selectors = {selectors} does not name {key.selector}: "
            "add it, or this key will not sign",
            file=sys.stderr,
        )
    print("restart the gateway to sign with it", file=sys.stderr)
    return 0


def cmd_dkim_list(args: argparse.Namespace) -> int:
    keys = configured_keys(_config(args), args.domain)
    if not keys:
        print("no DKIM keys")
        return 0
    print(f"{'DOMAIN':<30} {'SELECTOR':<16} {'STATE':<10} {'TYPE':<8} {'BITS':>5}  RECORD NAME")
    for key in keys:
        print(
            f"{key.domain:<30} {key.selector:<16} {key.state:<10} {key.type:<8} {key.bits:>5}  "
            f"{key.record_name}"
        )
    return 0


def cmd_dkim_retire(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        key = retire(
            configured_key_dir(config),
            args.domain,
            args.selector,
            now=time.time(),
            configured=configured_selectors(config),
        )
    except DkimKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"retired {key.selector} of {key.domain} ({key.path}); remove {key.record_name} TXT")
    return 0


def cmd_dns_records(args: argparse.Namespace) -> int:
    config = _config(args)
    domain = args.domain.lower().rstrip(".")
    records = expected_records(config, domain, configured_keys(config, domain))
    if args.json:
        print(msgspec.json.encode(records).decode())
        return 0
    snippet = bind_snippet(domain, records)
    print(snippet, end="")
    if args.write is not None:
        path = Path(args.write or f"{DEFAULT_SNIPPET_DIR}/{domain}.zone")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(snippet)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def print_report(report: DomainReport) -> None:
    print(f"{report.domain}: {report.status}")
    for check in report.records:
        required = "*" if check.required else " "
        label = check.purpose + (f" ({check.selector})" if check.selector else "")
        print(f"{required} {check.status:<16} {label:<22} {check.type:<5} {check.name}")
        if check.detail:
            print(f"{'':20}{check.detail}")
        if check.status in ("missing", "wrong"):
            print(f"{'':20}expected: {check.expected}")
            for value in check.seen:
                print(f"{'':20}seen:     {value}")
    print("readiness (Gmail/Yahoo bulk senders):")
    for item in report.readiness:
        print(f"  {item.status:<16} {item.name:<22} {item.detail}")


def cmd_dns_check(args: argparse.Namespace) -> int:
    config = _config(args)
    from gateway.commands.context import with_store

    async def work(store):  # type: ignore[no-untyped-def]
        return await verify_and_save(config, store, args.domain.lower(), time.time())

    report: DomainReport = asyncio.run(with_store(config, work))
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print_report(report)
    if report.status == "verified":
        return 0
    return EXIT_COULD_NOT_CHECK if report.status == "could_not_check" else EXIT_UNVERIFIED


def add_commands(commands: Any) -> None:
    dkim = commands.add_parser("dkim", help="DKIM keys: generate, list, retire")
    dkim_commands = dkim.add_subparsers(dest="dkim_command", required=True)
    gen = dkim_commands.add_parser(
        "keygen", help="make a signing key and print the TXT record to publish"
    )
    gen.add_argument("domain", help="the sending domain the key signs for")
    gen.add_argument("--selector", required=True, help="the DKIM selector, e.g. s2026")
    gen.add_argument(
        "--type",
        choices=["rsa", "ed25519"],
        default="rsa",
        help="key type (default rsa, 2048 bits)",
    )
    gen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    gen.add_argument(
        "--keep-signing",
        action="store_true",
        help="keep the domain's other keys of this type signing (no rotation)",
    )
    gen.set_defaults(func=cmd_dkim_keygen)
    listing = dkim_commands.add_parser("list", help="keys by domain: signing, published, retired")
    listing.add_argument("domain", nargs="?", help="only this domain (default: every domain)")
    listing.set_defaults(func=cmd_dkim_list)
    ret = dkim_commands.add_parser("retire", help="end a rotated-out key (stop publishing it)")
    ret.add_argument("domain", help="the domain whose key to retire")
    ret.add_argument("--selector", required=True, help="the selector of the key to retire")
    ret.set_defaults(func=cmd_dkim_retire)

    dns = commands.add_parser("dns", help="sending domains' DNS records: print and check")
    dns_commands = dns.add_subparsers(dest="dns_command", required=True)
    records = dns_commands.add_parser("records", help="the records to publish (BIND format)")
    records.add_argument("domain", help="a sending domain of the config")
    records.add_argument("--json", action="store_true", help="machine-readable output")
    records.add_argument(
        "--write",
        nargs="?",
        const="",
        metavar="FILE",
        help=f"also write the zone snippet (default {DEFAULT_SNIPPET_DIR}/<domain>.zone)",
    )
    records.set_defaults(func=cmd_dns_records)
    check = dns_commands.add_parser(
        "check", help="look the records up; exit 0 verified, 1 not, 3 could not check"
    )
    check.add_argument("domain", help="a sending domain of the config")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_dns_check)
