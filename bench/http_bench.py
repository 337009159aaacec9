#!/usr/bin/env python3
"""HTTP send API benchmark: single-message POSTs/s and batch recipients/s, with latency.

    .venv/bin/python bench/http_bench.py --mode single,batch --workers 2 --duration 10

One run: a fresh ``gateway serve`` (HTTP on a free loopback port, relaying to ``smtp-sink``),
loaded by ``wrk`` (C; Debian package, installed when missing) for ``--duration`` seconds over
``--connections`` keep-alive connections. Every ``202`` means the message was durable in the
spool (fsync'd) before the answer. Figures: accepted requests/s (and recipients/s), wrk's
p50/p99 latency, the gateway tree's CPU per accepted message, peak memory, then the time until
the sink has every message. The spool is counted afterwards: accepted must equal spooled.
Machinery (sink, CPU accounting, process handling) is shared with ``smtp_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smtp_bench as sb

from gateway.tenants import generate_api_key, hash_api_key

TEXT_LINE = "The quick brown fox jumps over the lazy dog; invoices are attached below.\n"


def wrk_script(path: str, body: str, key: str) -> str:
    return (
        f'wrk.method = "POST"\nwrk.path = "{path}"\n'
        f'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        f"wrk.body = [==[{body}]==]\n"
    )


def single_body(size: int) -> str:
    text = (TEXT_LINE * (size // len(TEXT_LINE) + 1))[:size]
    return json.dumps(
        {
            "from": {"email": "billing@bench.example", "name": "Bench Billing"},
            "to": [{"email": "ann@example.org", "name": "Ann"}],
            "subject": "Your invoice",
            "text": text,
            "tags": ["invoice"],
        }
    )


def batch_body(size: int, recipients: int) -> str:
    text = (TEXT_LINE * (size // len(TEXT_LINE) + 1))[:size]
    return json.dumps(
        {
            "from": {"email": "news@bench.example"},
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }},\n" + text,
            "recipients": [
                {"to": {"email": f"r{i}@example.org"}, "variables": {"name": f"Reader {i}"}}
                for i in range(recipients)
            ],
        }
    )


class HttpGateway(sb.GatewayServer):
    """``gateway serve`` with the HTTP API on and no SMTP listener in the way."""

    def __init__(
        self, workdir: Path, sink_port: int, *, workers: int, key: str, concurrency: int
    ) -> None:
        super().__init__(workdir, sink_port, workers=workers, pool_size=20, concurrency=concurrency)
        self.http_port = sb.free_port()
        config = self.config.read_text().replace(
            "[tenants.bench]",
            f"""[http]
enabled = true
address = "127.0.0.1"
port = {self.http_port}
rate_limit = 0.0
docs = false

[tenants.bench]""",
        )
        config += f"""
[[tenants.bench.api_keys]]
name = "bench"
key_hash = "{hash_api_key(key)}"
scopes = ["send"]
"""
        self.config.write_text(config)
        self.label = f"gateway w={workers}"

    def start(self) -> None:
        super().start()
        sb.wait_listening(self.http_port, self.workers, self.process, "gateway http")  # type: ignore[arg-type]


@dataclass
class WrkRun:
    requests: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    output: str


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, script: Path, args: argparse.Namespace) -> WrkRun:
    command = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{args.duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=True
    )
    out = done.stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    assert total is not None, out
    requests = int(total.group(1))
    seconds = float(total.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(non2xx.group(1)) if non2xx else 0
    if errors:
        failed += sum(int(g) for g in errors.groups()[:3])
    latency = {q: float(v) * _UNITS[u] for q, v, u in _LATENCY.findall(out)}
    return WrkRun(requests, failed, seconds, latency.get("50", 0.0), latency.get("99", 0.0), out)


@dataclass
class Result:
    label: str
    mode: str
    accepted_requests: int
    recipients: int
    failed: int
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    deliver_seconds: float | None
    delivered: int
    peak_pss_mb: float
    spool: str
    background_cores: float


def measure(
    mode: str, workers: int, sink: sb.Sink, workdir: Path, args: argparse.Namespace
) -> Result:
    key = generate_api_key()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-w{workers}-", dir=workdir))
    server = HttpGateway(
        run_dir, sink.port, workers=workers, key=key, concurrency=args.delivery_concurrency
    )
    per_request = 1 if mode == "single" else args.batch_size
    path = "/v1/messages" if mode == "single" else "/v1/messages/batch"
    body = single_body(args.size) if mode == "single" else batch_body(args.size, per_request)
    script = run_dir / "post.lua"
    script.write_text(wrk_script(path, body, key))
    try:
        server.start()
        sb.settle(server.root_pid)
        roots = (server.root_pid, sink.process.pid)
        if args.wait_idle > 0:
            sb.wait_for_quiet(roots, args.wait_idle)
        background = sb.Background(*roots)
        cpu_before = sb.tree_cpu(server.root_pid)
        base = sink.count
        with sb.MemorySampler(server.root_pid) as memory:
            started = time.monotonic()
            wrk = run_wrk(server.http_port, script, args)
            cpu_load = sum(sb.cpu_delta(cpu_before, sb.tree_cpu(server.root_pid)).values())
            accepted = wrk.requests - wrk.failed
            sink.expect(base + accepted * per_request)
            reached = sink.wait(time.monotonic() + args.phase_timeout)
            sb.settle(server.root_pid)
        background_cores = background.cores()
        delivered = sink.count - base
    finally:
        server.stop()
    return Result(
        label=server.label
        + (
            ""
            if args.delivery_concurrency == 100
            else f" (delivery concurrency {args.delivery_concurrency})"
        ),
        mode=mode,
        accepted_requests=accepted,
        recipients=accepted * per_request,
        failed=wrk.failed,
        seconds=wrk.seconds,
        p50_ms=wrk.p50_ms,
        p99_ms=wrk.p99_ms,
        server_cpu=cpu_load,
        deliver_seconds=None if reached is None else reached - started,
        delivered=delivered,
        peak_pss_mb=memory.peak_pss_kb / 1024,
        spool=server.leftovers(),
        background_cores=background_cores,
    )


def describe(r: Result) -> str:
    rate = r.accepted_requests / r.seconds
    lines = [
        f"== {r.label} {r.mode} ==",
        f"  accepted  {r.accepted_requests} requests ({r.recipients} recipients) in "
        f"{r.seconds:.2f} s = {rate:.0f} req/s, {r.recipients / r.seconds:.0f} recipients/s;"
        f" {r.failed} failed",
        f"  latency   p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms",
        f"  server CPU during the load {r.server_cpu:.2f} s = "
        f"{1000 * r.server_cpu / max(r.recipients, 1):.2f} ms per recipient",
        f"  delivered {r.delivered}"
        + ("" if r.deliver_seconds is None else f" by {r.deliver_seconds:.1f} s after the start"),
        f"  after     {r.spool}; other load {r.background_cores:.2f} cores",
    ]
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    rows = [
        "| target | mode | accepted req/s | recipients/s | p50 ms | p99 ms | CPU ms/recipient"
        " (during load) | delivered | peak ΣPSS MB | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.label} | {r.mode} | {r.accepted_requests / r.seconds:.0f} |"
            f" {r.recipients / r.seconds:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} |"
            f" {1000 * r.server_cpu / max(r.recipients, 1):.2f} | {r.delivered}/{r.recipients} |"
            f" {r.peak_pss_mb:.0f} | {r.background_cores:.2f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="single,batch", help="single, batch or both (a,b)")
    parser.add_argument("--workers", default="2", help="gateway.workers; a comma list runs each")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--size", type=int, default=2048, help="text body characters")
    parser.add_argument("--batch-size", type=int, default=100, help="recipients per batch")
    parser.add_argument(
        "--delivery-concurrency",
        type=int,
        default=100,
        help="[delivery] concurrency; 1 measures the accept path with delivery"
        " held back to a trickle during the load (it drains afterwards)",
    )
    parser.add_argument("--wait-idle", type=float, default=20.0)
    parser.add_argument("--phase-timeout", type=float, default=180.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/bin:/usr/sbin:/bin"},
        )
    sb.ensure_postfix()
    sb.become_subreaper()
    print("# " + shlex.join([sys.executable, *sys.argv]))
    print("# " + sb.machine_summary().replace("\n", "\n# "))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        workdir = Path(tmp)
        sink = sb.Sink(workdir)
        try:
            for workers in [int(w) for w in args.workers.split(",")]:
                for mode in args.mode.split(","):
                    result = measure(mode, workers, sink, workdir, args)
                    print(describe(result), flush=True)
                    results.append(result)
        finally:
            sink.stop()
    print()
    print(table(results))
    print()
    print(
        "reproduce: cd "
        + str(sb.REPO)
        + " && .venv/bin/python bench/http_bench.py "
        + shlex.join(sys.argv[1:])
    )
    # wrk counts answers received before it stopped; requests in flight then are delivered too.
    lost = [r for r in results if r.delivered < r.recipients]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
