#!/usr/bin/env python3
"""Hostile batch templates against a real ``gateway serve``: does the gateway stay responsive?

    .venv/bin/python bench/template_bench.py --duration 10 [--workers 1] [--json]

Starts a fresh gateway (SMTP and HTTP on free loopback ports, delivering to the capture
outbox), then measures an SMTP client's greeting time (connect to the 220 line) and
``GET /healthz`` twice: unloaded, and while ``--attackers`` threads with a send-only key submit
the hostile templates below in a loop and one thread submits legitimate batches. Prints p50/p99
of both probes in each phase, what every hostile request was answered (422 and the limit it
names), how many legitimate batches completed, and the gateway tree's peak RSS next to the
documented bound (``RSS_BASE_MB`` plus ``templates.workers`` x ``templates.memory`` per gateway
worker). ``--json`` prints the figures as one JSON object instead (the test suite reads it).
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import smtp_bench as sb

from gateway.tenants import generate_api_key, hash_api_key

RSS_BASE_MB = 160
"""A gateway worker (and the supervisor's share) without render processes, measured peak."""
PROBE_INTERVAL = 0.02
HOSTILE = {
    "nested loops": (
        "text",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    ),
    "string multiplication": ("text", "{{ 'a' * 200000000 }}"),
    "huge power": ("html", "{{ 2 ** 100000000 }}"),
    "output by loop": ("text", "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}"),
    "allocation": ("subject", "{{ 'a'.ljust(400000000) }}"),
}


def config(tmp: Path, smtp: int, http: int, key: str, args: argparse.Namespace) -> str:
    return f"""
[gateway]
hostname = "bench.test"
data_dir = "{tmp / "data"}"
workers = {args.workers}
log_level = "warning"

[smtp]
listeners = [{{ name = "dev", port = {smtp}, tls = "none" }}]

[http]
enabled = true
port = {http}
rate_limit = 0

[templates]
workers = {args.render_workers}
cpu_time = "{args.cpu_time}"
memory = {args.memory_mb * 1024 * 1024}

[tenants.acme]
smtp_networks = ["127.0.0.1/32"]

[[tenants.acme.api_keys]]
name = "sender"
key_hash = "{hash_api_key(key)}"
scopes = ["send"]

[delivery]
providers = ["capture"]
"""


def greeting_ms(port: int) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(512)
            if not chunk:
                raise ConnectionError("closed before the greeting")
            data += chunk
        elapsed = (time.perf_counter() - started) * 1000
        assert data.startswith(b"220"), data
        s.sendall(b"QUIT\r\n")
    return elapsed


def healthz_ms(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.get("/healthz")
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.status_code
    return elapsed


def probe(smtp: int, http: str, seconds: float, stop: threading.Event) -> dict[str, list[float]]:
    """Greeting and /healthz times, one of each every ``PROBE_INTERVAL``."""
    found: dict[str, list[float]] = {"greeting": [], "healthz": []}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=http, timeout=10) as client:
        while time.monotonic() < deadline and not stop.is_set():
            found["greeting"].append(greeting_ms(smtp))
            found["healthz"].append(healthz_ms(client))
            time.sleep(PROBE_INTERVAL)
    return found


def batch(template: dict[str, str], recipients: int) -> dict[str, Any]:
    return {
        "from": "news@acme.test",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }}, this is the news.",
        **template,
        "recipients": [
            {"to": f"r{i}@example.org", "variables": {"name": f"Reader {i}"}}
            for i in range(recipients)
        ],
    }


class Load:
    """Attackers looping over the hostile templates and one legitimate sender, until stopped."""

    def __init__(self, http: str, key: str, attackers: int) -> None:
        self.http, self.key = http, key
        self.stop = threading.Event()
        self.hostile: collections.Counter[str] = collections.Counter()
        self.legit: collections.Counter[int] = collections.Counter()
        self.legit_seconds: list[float] = []
        self.threads = [
            threading.Thread(target=self._attack, args=(i,), daemon=True) for i in range(attackers)
        ]
        self.threads.append(threading.Thread(target=self._send, daemon=True))

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.http, timeout=120, headers={"Authorization": f"Bearer {self.key}"}
        )

    def _attack(self, offset: int) -> None:
        names = list(HOSTILE)
        with self._client() as client:
            n = offset
            while not self.stop.is_set():
                name = names[n % len(names)]
                field, source = HOSTILE[name]
                answer = client.post("/v1/messages/batch", json=batch({field: source}, 3))
                limit = answer.json().get("limit") if answer.status_code == 422 else None
                self.hostile[f"{name}: {answer.status_code} {limit}"] += 1
                n += 1

    def _send(self) -> None:
        with self._client() as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                answer = client.post("/v1/messages/batch", json=batch({}, 50))
                self.legit[answer.status_code] += 1
                if answer.status_code == 202:
                    assert answer.json()["queued"] == 50, answer.text
                    self.legit_seconds.append(time.perf_counter() - started)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(sb.percentile(ordered, 0.5), 2),
        "p99_ms": round(sb.percentile(ordered, 0.99), 2),
        "max_ms": round(ordered[-1], 2) if ordered else float("nan"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    key = generate_api_key()
    smtp_port, http_port = sb.free_port(), sb.free_port()
    with tempfile.TemporaryDirectory(prefix="template-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        config_file = tmp / "gateway.toml"
        config_file.write_text(config(tmp, smtp_port, http_port, key, args))
        with (tmp / "serve.log").open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(config_file), "serve"],
                cwd=tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                return measure(server, smtp_port, http_port, key, args)
            finally:
                sb.stop_process(server)


def measure(
    server: subprocess.Popen[bytes], smtp: int, http_port: int, key: str, args: argparse.Namespace
) -> dict[str, Any]:
    http = f"http://127.0.0.1:{http_port}"
    sb.wait_listening(http_port, 1, server, "gateway http")
    sb.wait_listening(smtp, 1, server, "gateway smtp")
    stop = threading.Event()
    with httpx.Client(base_url=http, headers={"Authorization": f"Bearer {key}"}) as client:
        warm = client.post("/v1/messages/batch", json=batch({}, 5), timeout=60)  # start renderers
        assert warm.status_code == 202, warm.text
    unloaded = probe(smtp, http, args.duration / 2, stop)
    with (
        sb.MemorySampler(server.pid, interval=0.2) as memory,
        Load(http, key, args.attackers) as load,
    ):
        loaded = probe(smtp, http, args.duration, stop)
    bound_mb = args.workers * (RSS_BASE_MB + args.render_workers * args.memory_mb)
    return {
        "unloaded": {name: summary(v) for name, v in unloaded.items()},
        "loaded": {name: summary(v) for name, v in loaded.items()},
        "hostile": dict(sorted(load.hostile.items())),
        "legit_batches": dict(load.legit),
        "legit_batch_p50_s": round(sorted(load.legit_seconds)[len(load.legit_seconds) // 2], 3)
        if load.legit_seconds
        else None,
        "peak_rss_mb": round(memory.peak_rss_kb / 1024),
        "rss_bound_mb": bound_mb,
    }


def print_table(figures: dict[str, Any], command: str) -> None:
    print("| phase | probe | samples | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for phase in ("unloaded", "loaded"):
        for name, s in figures[phase].items():
            print(
                f"| {phase} | {name} | {s['n']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |"
            )
    print()
    print("hostile requests (answer, limit named):")
    for line, count in figures["hostile"].items():
        print(f"  {count:5d}  {line}")
    print(
        f"legitimate 50-recipient batches: {figures['legit_batches']}, "
        f"p50 {figures['legit_batch_p50_s']} s"
    )
    print(
        f"peak RSS of the gateway tree: {figures['peak_rss_mb']} MB "
        f"(documented bound {figures['rss_bound_mb']} MB)"
    )
    print(f"\nreproduce: {command}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds under attack")
    parser.add_argument("--workers", type=int, default=1, help="gateway.workers")
    parser.add_argument("--attackers", type=int, default=2, help="threads sending hostile batches")
    parser.add_argument("--render-workers", type=int, default=2, help="templates.workers")
    parser.add_argument("--cpu-time", default="1s", help="templates.cpu_time")
    parser.add_argument("--memory-mb", type=int, default=256, help="templates.memory in MiB")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
    else:
        command = (
            f"cd {shlex.quote(str(sb.REPO))} && .venv/bin/python bench/template_bench.py "
            + " ".join(shlex.quote(a) for a in sys.argv[1:])
        )
        print_table(figures, command)


if __name__ == "__main__":
    main()
