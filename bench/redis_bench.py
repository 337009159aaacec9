"""Several nodes on one Redis: accepted and delivered msg/s with 1 and 2 gateway nodes sharing a
Redis store, against one node on its own SQLite spool, on the harness of ``smtp_bench.py``.

Every run starts fresh servers on loopback: for Redis setups a private ``redis-server`` (AOF on,
``appendfsync`` as given, no RDB snapshots, its files in the run directory), then the gateway
nodes, each a ``gateway serve`` with its own data directory relaying to the shared
``smtp-sink``. The load is split evenly: one load client per node, all started together, as a
load balancer would spread connections. See ``bench/README.md``.

Usage::

    .venv/bin/python bench/redis_bench.py [--messages 5000] [--sessions 20] [--size 5120]
        [--setups sqlite,redis1,redis2] [--appendfsync always,everysec] [--workers 1]
        [--client smtp-source|python] [--repeat N] [--gateway-rev HEAD]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import smtp_bench as sb

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SETUPS = {"sqlite": ("sqlite", 1), "redis1": ("redis", 1), "redis2": ("redis", 2)}
FSYNC_MODES = ("always", "everysec", "no")


class RedisProcess:
    """A private ``redis-server`` on a free loopback port, its AOF in ``directory``."""

    def __init__(self, directory: Path, appendfsync: str, replica_of: int | None = None) -> None:
        self.port = sb.free_port()
        self.appendfsync = appendfsync
        directory.mkdir()
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                appendfsync,
                "--logfile",
                str(directory / "redis.log"),
                "--daemonize",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                *(["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        sb.wait_listening(self.port, 1, self.process, "redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def wait_for_replicas(self, count: int, timeout: float = 30.0) -> None:
        import redis

        deadline = time.monotonic() + timeout
        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            while int(client.info("replication").get("connected_slaves", 0)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{count} replicas did not connect within {timeout:.0f}s")
                time.sleep(0.05)

    def stop(self) -> None:
        sb.stop_process(self.process, grace=10)


class Node(sb.GatewayServer):
    """One gateway node; with ``redis_url`` its store is that Redis instead of SQLite."""

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        *,
        name: str,
        redis_url: str | None,
        min_replicas: int = 0,
        **kwargs: object,
    ) -> None:
        super().__init__(workdir, sink_port, **kwargs)  # type: ignore[arg-type]
        self.redis_url = redis_url
        self.label = f"{name} ({'redis' if redis_url else 'sqlite'}, w={self.workers})"
        if redis_url:
            with open(self.config, "a") as config:
                config.write(
                    f'\n[store]\nbackend = "redis"\nurl = "{redis_url}"\n'
                    f"min_replicas = {min_replicas}\n"
                )

    def leftovers(self) -> str:
        if self.redis_url is None:
            return super().leftovers()
        done = subprocess.run(
            [sys.executable, "-c", _REDIS_COUNTS, self.redis_url],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=60,
        )
        found = done.stdout.strip() or done.stderr.strip().splitlines()[-1:]
        problems = self._log.read_text(errors="replace").count(" ERROR ")
        return f"redis {found}, {problems} ERROR lines in gateway.log"


_REDIS_COUNTS = """\
import asyncio, sys
from gateway.store.redis import RedisStore

async def main():
    store = RedisStore(sys.argv[1])
    await store.open()
    try:
        print({k.value: v for k, v in (await store.counts()).items() if v})
    finally:
        await store.close()

asyncio.run(main())
"""


@dataclass
class Outcome:
    setup: str
    appendfsync: str
    nodes: int
    messages: int
    accepted: int
    accept_seconds: float
    delivered: int
    deliver_seconds: float | None
    gateway_cpu: float
    redis_cpu: float
    peak_pss_mb: float
    p50_ms: float | None
    p99_ms: float | None
    background_cores: float
    leftovers: list[str]
    errors: list[str]

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.accept_seconds if self.accept_seconds else 0.0

    @property
    def deliver_rate(self) -> float | None:
        return self.delivered / self.deliver_seconds if self.deliver_seconds else None

    def per_message_ms(self, seconds: float) -> float:
        return seconds / max(self.delivered, 1) * 1000

    @property
    def complete(self) -> bool:
        return self.accepted == self.messages and self.delivered == self.accepted


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal whole shares."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_clients(nodes: list[Node], args: argparse.Namespace) -> list[sb.ClientRun]:
    """One load client per node, started together; each sends its share of the messages."""
    runs: list[sb.ClientRun | None] = [None] * len(nodes)
    shares = zip(split(args.messages, len(nodes)), split(args.sessions, len(nodes)), strict=True)

    def drive(index: int, node: Node, share: argparse.Namespace) -> None:
        runs[index] = (
            sb.run_smtp_source(node.port, share)
            if args.client == "smtp-source"
            else sb.run_python_client(node.port, share)
        )

    threads = []
    for index, (node, (messages, sessions)) in enumerate(zip(nodes, shares, strict=True)):
        share = copy.copy(args)
        share.messages, share.sessions, share.pipeline = messages, sessions, False
        threads.append(threading.Thread(target=drive, args=(index, node, share)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [run for run in runs if run is not None]


def measure(
    setup: str, appendfsync: str, rundir: Path, sink: sb.Sink, args: argparse.Namespace
) -> Outcome:
    backend, count = SETUPS[setup]
    for name in ("node-a", "node-b")[:count]:
        (rundir / name).mkdir()
    redis = RedisProcess(rundir / "redis", appendfsync) if backend == "redis" else None
    replicas = []
    if redis is not None:
        replicas = [
            RedisProcess(rundir / f"replica-{i}", appendfsync, replica_of=redis.port)
            for i in range(args.replicas)
        ]
        redis.wait_for_replicas(args.replicas)
    nodes = [
        Node(
            rundir / name,
            sink.port,
            name=name,
            redis_url=redis.url if redis else None,
            min_replicas=args.replicas,
            workers=args.workers,
            pool_size=args.pool_size,
            concurrency=args.concurrency,
            source=args.gateway_src,
        )
        for name in ("node-a", "node-b")[:count]
    ]
    started: list[Node] = []
    try:
        for node in nodes:
            node.start()
            started.append(node)
        roots = tuple(n.root_pid for n in nodes) + tuple(
            r.process.pid for r in ([redis] if redis else []) + replicas
        )
        for root in roots:
            sb.settle(root)
        quiet = sb.wait_for_quiet((*roots, sink.process.pid), args.wait_idle)
        if quiet >= 0.15:
            print(f"  (machine still busy: {quiet:.2f} cores used by other processes)", flush=True)
        background = sb.Background(*roots, sink.process.pid)
        base = sink.count
        sink.expect(base + args.messages)
        cpu_before = [sb.tree_cpu(root) for root in roots]
        with contextlib.ExitStack() as stack:
            samplers = [stack.enter_context(sb.MemorySampler(root)) for root in roots]
            runs = run_clients(nodes, args)
            accepted = sum(run.accepted for run in runs)
            if accepted < args.messages:
                sink.expect(base + accepted)
            first = min(run.started for run in runs)
            last = max(run.started + run.elapsed for run in runs)
            reached = sink.wait(time.monotonic() + args.phase_timeout)
            for root in roots:
                sb.settle(root)
        cpu = [
            sum(sb.cpu_delta(before, sb.tree_cpu(root)).values())
            for before, root in zip(cpu_before, roots, strict=True)
        ]
        background_cores = background.cores()
        delivered = sink.count - base
    finally:
        for node in started:
            node.stop()
    leftovers = [nodes[0].leftovers()] if redis else [n.leftovers() for n in nodes]
    if redis:
        leftovers += [f"{n.label}: {n.leftovers().split(', ', 1)[1]}" for n in nodes[1:]]
        redis.stop()
    for replica in replicas:
        replica.stop()
    latencies = [run for run in runs if run.p50_ms is not None]
    return Outcome(
        setup=setup,
        appendfsync=(
            (f"{appendfsync} +{len(replicas)} replica" if replicas else appendfsync)
            if redis
            else "-"
        ),
        nodes=count,
        messages=args.messages,
        accepted=accepted,
        accept_seconds=last - first,
        delivered=delivered,
        deliver_seconds=None if reached is None else reached - first,
        gateway_cpu=sum(cpu[:count]),
        redis_cpu=sum(cpu[count:]),
        peak_pss_mb=sum(s.peak_pss_kb for s in samplers) / 1024,
        p50_ms=max((r.p50_ms for r in latencies if r.p50_ms), default=None),
        p99_ms=max((r.p99_ms for r in latencies if r.p99_ms), default=None),
        background_cores=background_cores,
        leftovers=leftovers,
        errors=[e for run in runs for e in run.errors],
    )


def describe(o: Outcome) -> str:
    rate = f"{o.deliver_rate:.0f}" if o.deliver_rate else "incomplete"
    lines = [
        f"{o.setup} (appendfsync {o.appendfsync}): accepted {o.accepted}/{o.messages} in"
        f" {o.accept_seconds:.2f} s = {o.accept_rate:.0f} msg/s; delivered {o.delivered}"
        f" = {rate} msg/s; CPU gateway {o.gateway_cpu:.2f} s + redis {o.redis_cpu:.2f} s"
        f" = {o.per_message_ms(o.gateway_cpu + o.redis_cpu):.2f} ms/msg;"
        f" peak PSS {o.peak_pss_mb:.0f} MB; other load {o.background_cores:.2f} cores",
        *(f"  {line}" for line in o.leftovers),
    ]
    if o.delivered != o.accepted:
        lines.append(f"  DELIVERED {o.delivered} != ACCEPTED {o.accepted}")
    lines += [f"  client: {e}" for e in o.errors]
    return "\n".join(lines)


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| store | nodes | appendfsync | accepted msg/s | delivered msg/s | p50 / p99 ms"
        " | gateway CPU ms/msg | redis CPU ms/msg | peak ΣPSS MB | other load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        latency = f"{o.p50_ms:.1f} / {o.p99_ms:.1f}" if o.p50_ms and o.p99_ms else "-"
        rows.append(
            f"| {SETUPS[o.setup][0]} | {o.nodes} | {o.appendfsync} | {o.accept_rate:.0f}"
            f" | {f'{o.deliver_rate:.0f}' if o.deliver_rate else 'incomplete'} | {latency}"
            f" | {o.per_message_ms(o.gateway_cpu):.2f}"
            f" | {o.per_message_ms(o.redis_cpu):.2f} | {o.peak_pss_mb:.0f}"
            f" | {o.background_cores:.2f} |"
        )
    return "\n".join(rows)


def summary_table(outcomes: list[Outcome]) -> str:
    """Median (min-max) over the repeats of each (setup, appendfsync)."""
    grouped: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        grouped.setdefault((o.setup, o.appendfsync), []).append(o)

    def spread(values: list[float], digits: int = 0) -> str:
        return (
            f"{statistics.median(values):.{digits}f}"
            f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
        )

    rows = [
        "| store | nodes | appendfsync | runs | accepted msg/s | delivered msg/s"
        " | gateway CPU ms/msg | redis CPU ms/msg | other load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (setup, mode), runs in grouped.items():
        backend, nodes = SETUPS[setup]
        rows.append(
            f"| {backend} | {nodes} | {mode} | {len(runs)}"
            f" | {spread([o.accept_rate for o in runs])}"
            f" | {spread([o.deliver_rate or 0.0 for o in runs])}"
            f" | {spread([o.per_message_ms(o.gateway_cpu) for o in runs], 2)}"
            f" | {spread([o.per_message_ms(o.redis_cpu) for o in runs], 2)}"
            f" | {max(o.background_cores for o in runs):.2f} |"
        )
    return "\n".join(rows)


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(setup, appendfsync) for every run; repeats interleaved so all meet the same load."""
    runs = []
    for _ in range(args.repeat):
        for setup in args.setups:
            modes = args.appendfsync if SETUPS[setup][0] == "redis" else ["-"]
            runs += [(setup, mode) for mode in modes]
    return runs


def parse_list(choices: tuple[str, ...]) -> object:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=5120, help="body bytes per message")
    parser.add_argument("--sessions", type=int, default=20, help="SMTP sessions over all nodes")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument(
        "--setups",
        type=parse_list(tuple(SETUPS)),
        default=list(SETUPS),
        help="comma-separated: sqlite, redis1, redis2",
    )
    parser.add_argument(
        "--appendfsync",
        type=parse_list(FSYNC_MODES),
        default=["always"],
        help="Redis AOF fsync policies to run (comma-separated)",
    )
    parser.add_argument("--workers", type=int, default=1, help="gateway workers per node")
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="Redis replicas, and store.min_replicas: accept only once they have the message",
    )
    parser.add_argument("--client", choices=("smtp-source", "python"), default="smtp-source")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pool-size", type=int, default=20, help="relay pool_size per node")
    parser.add_argument(
        "--concurrency", type=int, default=100, help="delivery.concurrency per node"
    )
    parser.add_argument("--phase-timeout", type=float, default=120.0)
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="seconds to wait for the machine to be quiet before each run",
    )
    parser.add_argument(
        "--gateway-rev",
        default=None,
        metavar="REV",
        help="measure this git revision (exported) instead of the work tree",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser


def reproduce_command(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python",
        "bench/redis_bench.py",
        "--size",
        str(args.size),
        "--sessions",
        str(args.sessions),
        "--messages",
        str(args.messages),
        "--setups",
        ",".join(args.setups),
        "--appendfsync",
        ",".join(args.appendfsync),
        "--workers",
        str(args.workers),
        *(["--replicas", str(args.replicas)] if args.replicas else []),
        "--client",
        args.client,
    ]
    if args.repeat != 1:
        parts += ["--repeat", str(args.repeat)]
    if args.wait_idle != 30.0:
        parts += ["--wait-idle", f"{args.wait_idle:g}"]
    if args.gateway_rev is not None:
        parts += ["--gateway-rev", args.gateway_rev]
    return f"cd {sb.REPO} && {shlex.join(parts)}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.gateway_src = None
    args.pipeline = False
    if not Path(REDIS_SERVER).is_file():
        raise SystemExit("redis-server is missing (scripts/test.sh installs it)")
    sb.ensure_postfix()  # smtp-sink and smtp-source
    sb.become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="redis-bench-"))
    print(f"# {reproduce_command(args)}")
    print(f"# {sb.machine_summary()}; {redis_version()}")
    print(
        f"# {args.messages} messages of {args.size} body bytes over {args.sessions} sessions"
        f" in all per run; work directory {workdir}",
        flush=True,
    )
    outcomes: list[Outcome] = []
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        if args.gateway_rev is not None:
            args.gateway_src = sb.export_rev(args.gateway_rev, workdir / "gateway-src")
            print(f"# gateway sources: {sb.describe_source(args)}")
        sink = sb.Sink(workdir)
        try:
            for number, (setup, mode) in enumerate(plan(args), start=1):
                rundir = workdir / f"{number}-{setup}-{mode}"
                rundir.mkdir()
                outcome = measure(setup, mode, rundir, sink, args)
                outcomes.append(outcome)
                print(describe(outcome), flush=True)
        finally:
            sink.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    print()
    print(table(outcomes))
    if args.repeat > 1:
        print()
        print(summary_table(outcomes))
    print(f"\nload clients and reaped children used {client_cpu:.1f} CPU s in all")
    print(f"reproduce: {reproduce_command(args)}")
    return 0 if all(o.complete for o in outcomes) else 1


def redis_version() -> str:
    done = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True)
    return " ".join(done.stdout.split()[:3]) if done.returncode == 0 else "redis-server ?"


if __name__ == "__main__":
    sys.exit(main())
