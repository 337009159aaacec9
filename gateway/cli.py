"""The ``gateway`` command: serve, check-config, queue, outbox, providers, hash-password,
api-key."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.commands.context import config_path, load, utc, with_store
from gateway.config import CaptureProviderSection, ConfigError, load_config, summarize
from gateway.config_warnings import config_warnings
from gateway.passwords import hash_password
from gateway.providers.capture import read_outbox

# --- commands ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = load(args)
    from gateway.ops.logging import configure_logging
    from gateway.server import serve

    configure_logging(config.gateway.log_level, config.gateway.log_format)

    source = config_path(args.config) or "built-in defaults"
    print(f"gateway {__version__}: configuration from {source}", file=sys.stderr)
    print(summarize(config), file=sys.stderr)
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return serve(config, config_path(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or config_path(args.config)
    config = load_config(path)
    print(f"{path or 'built-in defaults'}: OK")
    print(summarize(config))
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    config = load(args)
    from gateway.plugin_manager import describe_plugins, make_plugin_manager

    pm = make_plugin_manager(extra=config.gateway.plugins, tables=config.plugins)
    rows = describe_plugins(pm)
    if not rows:
        print("no plugins loaded")
    for name, version, hooks in rows:
        print(f"{name} ({version})")
        for hook in hooks:
            print(f"    {hook}")
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    config = load(args)
    directories = [
        Path(p.directory) if p.directory else config.data_dir / "outbox"
        for p in config.providers.values()
        if isinstance(p, CaptureProviderSection)
    ]
    shown = 0
    for directory in directories:
        for envelope in read_outbox(directory)[: args.limit]:
            shown += 1
            print(
                f"{utc(envelope.captured_at)}  {envelope.message_id}  "
                f"<{envelope.mail_from}> → <{envelope.recipient}>  {envelope.subject!r}"
            )
            print(f"    {envelope.file} ({envelope.size} bytes)")
    if not shown:
        print("the outbox is empty")
    return 0


def cmd_providers(args: argparse.Namespace) -> int:
    """Breaker state and counters per provider, from the running workers' status files."""
    from gateway.routing import read_status

    config = load(args)
    workers = read_status(config)
    if not workers:
        print("no worker status yet (is the gateway running with this config?)", file=sys.stderr)
    columns = ("sent", "failed", "rejected", "timeouts", "limited", "opened")
    print(f"{'provider':16} {'type':8} {'state':24} " + " ".join(f"{c:>8}" for c in columns))
    for name, section in config.providers.items():
        states, totals, errors = [], dict.fromkeys(columns, 0), []
        for worker in workers:
            seen = worker.get("providers", {}).get(name)
            if seen is None:
                continue
            states.append(str(seen.get("state", "?")))
            for column in columns:
                totals[column] += int(seen.get(column, 0))
            if seen.get("last_error"):
                errors.append(str(seen["last_error"]))
        kind = type(section).__struct_config__.tag
        state = ",".join(states) if states else "unknown"
        print(f"{name:16} {kind!s:8} {state:24} " + " ".join(f"{totals[c]:>8}" for c in columns))
        if errors:
            print(f"{'':16} last error: {errors[-1]}")
    for worker in workers:
        print(f"worker pid {worker.get('pid')}: status written {worker['age']:.0f}s ago")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass("Password: ")
    if not password:
        print("empty password refused", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    from gateway.tenants import generate_api_key, hash_api_key

    key = generate_api_key()
    scopes = ", ".join(f'"{s}"' for s in dict.fromkeys(args.scope or ["send", "read"]))
    print(
        f"API key (shown once; give it to the service, keep it secret):\n\n  {key}\n",
        file=sys.stderr,
    )
    print("Add to gateway.toml:\n", file=sys.stderr)
    print(
        f'[[tenants.{args.tenant}.api_keys]]\nname = "{args.name}"\n'
        f'key_hash = "{hash_api_key(key)}"\nscopes = [{scopes}]'
    )
    print(
        "\nThen:\n"
        "  1. paste the block above into the config file the gateway runs with, and make sure\n"
        "     [http] enabled = true;\n"
        "  2. check it: gateway check-config FILE\n"
        "  3. apply it: `kill -HUP <gateway pid>` reloads tenants and their keys without a\n"
        "     restart (turning [http] on the first time needs a restart).\n"
        f"Tenant {args.tenant!r}: a new [tenants.*] table takes the place of the built-in\n"
        "default tenant, which trusts SMTP from loopback; `default` keeps that trust unless it\n"
        "sets smtp_networks, and check-config warns when a listener accepts mail from nobody.",
        file=sys.stderr,
    )
    return 0


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def cmd_domains(args: argparse.Namespace) -> int:
    """``gateway domains list | warming NAME | health NAME | resume NAME``."""
    config = load(args)
    if "warming" not in config.plugins:
        print("sending identities need the warming plugin: add [plugins.warming]", file=sys.stderr)
        return 1
    from gateway_plugins.warming import build

    from gateway.clock import SystemClock

    async def work(store: Any) -> int:
        warming = build(config, store, SystemClock())
        if args.domains_command == "list":
            print(
                f"{'KIND':<6} {'NAME':<30} {'PHASE':<11} {'DAY':>3} {'CAP':>8} {'SENT':>8} "
                f"{'DEFERRED':>8} {'SCORE':>5} {'TIER':<9} PAUSED"
            )
            for each in await warming.known():
                s = await warming.summary(each)
                cap = "-" if s.cap_today is None else str(s.cap_today)
                score = "-" if s.score is None else str(s.score)
                print(
                    f"{s.kind:<6} {s.name:<30} {s.phase:<11} {s.day:>3} {cap:>8} "
                    f"{s.sent_today:>8} {s.deferred_today:>8} {score:>5} {s.tier:<9} "
                    + (f"yes: {s.pause_reason}" if s.paused else "no")
                )
            return 0
        identity = await warming.lookup(args.name) or (
            warming.domain_identity(args.name) if "." in args.name else None
        )
        if identity is None:
            print(f"no sending domain or IP {args.name!r}", file=sys.stderr)
            return 1
        if args.domains_command == "warming":
            w = await warming.status(identity)
            print(f"{w.kind} {w.name}: {w.phase}")
            if w.schedule:
                print(f"schedule      {w.schedule}, day {w.day} of {w.days}, started {w.start}")
            cap = "none" if w.cap_today is None else str(w.cap_today)
            print(f"cap today     {cap}")
            print(f"sent today    {w.sent_today}")
            print(f"deferred      {w.deferred_today}")
            print(f"cap tomorrow  {'none' if w.cap_tomorrow is None else w.cap_tomorrow}")
            print(f"caps reset    {utc(w.resets_at)} UTC")
            for isp, usage in w.by_isp.items():
                print(f"  {isp:<10} {usage.sent} of {usage.cap}")
            return 0
        if args.domains_command == "health":
            h = await warming.health(identity)
            c = h.counts
            print(f"{h.kind} {h.name}: score {'-' if h.score is None else h.score}, {h.tier}")
            print(
                f"last {h.window_days} days: {c.delivered} delivered, {c.bounced} bounced, "
                f"{c.deferred} deferred, {c.complained} complaints, {c.engaged} engaged"
            )
            print(
                f"rates         bounce {_percent(h.bounce_rate)}, complaint "
                f"{_percent(h.complaint_rate)}, delivery {_percent(h.delivery_rate)}, "
                f"engagement {_percent(h.engagement_rate)}"
            )
            print(f"paused        {'yes: ' + h.pause_reason if h.paused else 'no'}")
            return 0
        resumed = await warming.resume(identity)
        print(f"{identity.kind} {identity.name}: " + ("resumed" if resumed else "was not paused"))
        return 0

    result: int = asyncio.run(with_store(config, work))
    return result


# --- parser -----------------------------------------------------------------------------------


CONFIG_HELP = "config file (default: $GATEWAY_CONFIG or ./gateway.toml)"


class _SubcommandParser(argparse.ArgumentParser):
    """Every subcommand also takes ``-c FILE``, so it may come after the subcommand too
    (``gateway queue list -c gw.toml``); given nowhere, the top-level default stands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-c", "--config", default=argparse.SUPPRESS, help=CONFIG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Self-hosted ESP gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("-c", "--config", help=CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser("check-config", help="validate a config file and summarize it")
    check.add_argument("file", nargs="?", help="the config file (default: as -c)")
    check.set_defaults(func=cmd_check_config)

    from gateway.commands.queue import add_commands as add_queue_commands

    add_queue_commands(commands)
    from gateway.commands.send import add_commands as add_send_commands

    add_send_commands(commands)
    from gateway.commands.health import add_commands as add_health_commands

    add_health_commands(commands)

    plugins = commands.add_parser(
        "plugins", help="list loaded plugins and their hooks, in call order"
    )
    plugins.set_defaults(func=cmd_plugins)

    outbox = commands.add_parser("outbox", help="list mail captured by the capture provider")
    outbox.add_argument(
        "--limit", type=int, default=50, help="newest this many per outbox (default 50)"
    )
    outbox.set_defaults(func=cmd_outbox)

    providers = commands.add_parser(
        "providers", help="providers: circuit breaker state and counters of each worker"
    )
    providers.set_defaults(func=cmd_providers)

    hashing = commands.add_parser("hash-password", help="hash an SMTP password for the config")
    hashing.add_argument("--stdin", action="store_true", help="read the password from stdin")
    hashing.set_defaults(func=cmd_hash_password)

    domains = commands.add_parser(
        "domains", help="sending domains and IPs: warming, health, pauses (warming plugin)"
    )
    domains_commands = domains.add_subparsers(dest="domains_command", required=True)
    domains_commands.add_parser("list", help="every identity: day, cap, sent, score, pause")
    for name, text in (
        ("warming", "warming day, today's cap, sent and deferred"),
        ("health", "rates, health score and tier, pause reason"),
        ("resume", "lift a pause (auto-pauses stay until an operator resumes)"),
    ):
        domains_commands.add_parser(name, help=text).add_argument("name", help="domain or IP")
    domains.set_defaults(func=cmd_domains)

    api_key = commands.add_parser(
        "api-key", help="make an HTTP API key and print its config block (the key goes to stderr)"
    )
    api_key.add_argument("--tenant", default="default", help="tenant that owns the key")
    api_key.add_argument("--name", required=True, help="a name for the key, e.g. the service")
    api_key.add_argument(
        "--scope",
        action="append",
        choices=["send", "read", "admin", "operator"],
        help="repeat for several (default: send and read)",
    )
    api_key.set_defaults(func=cmd_api_key)

    from gateway.ops.commands import add_commands as add_ops_commands

    add_ops_commands(commands)
    from gateway.dnsauth.commands import add_commands as add_dns_commands

    add_dns_commands(commands)
    from gateway.commands.suppressions import add_commands as add_suppression_commands

    add_suppression_commands(commands)
    # A built-in plugin's commands: the CLI is the top of the import graph, so it may import them.
    from gateway_plugins.audience.commands import add_commands as add_audience_commands

    add_audience_commands(commands)
    from gateway_plugins.automation.commands import add_commands as add_automation_commands

    add_automation_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`gateway queue list | head`): stop quietly, as a shell tool
        # does. Python would otherwise print a traceback flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result
