"""A legitimate submission client's throughput and latency, unloaded and while a hostile
client holds connections and guesses passwords (issue 17; see docs/hardening.md).

One ``gateway serve`` (fresh data directory, default limits, a plain-text listener on loopback
with AUTH allowed, the ``capture`` provider) is measured twice:

1. **unloaded**: ``--legit-sessions`` concurrent sessions from 127.0.0.1, each: connect, EHLO,
   AUTH PLAIN, ``--per-session`` messages (MAIL, RCPT, DATA of ``--size`` bytes), QUIT; until
   ``--messages`` messages are accepted;
2. **under attack**: the same, while a hostile process (its own CPU) holds ``--idle`` idle
   connections from ten addresses (127.0.0.2-11) and runs ``--guessers`` password guessers that
   rotate over 250 addresses (127.0.1.x), each AUTH a wrong password for the legitimate user.

Printed: messages/s, p50/p99 of the AUTH (connect to ``235``; the legitimate user's password is
cached after its first login, as for any reconnecting application) and of a message (``MAIL`` to
the ``250`` after DATA), the slowest of ten logins as users never seen before (each pays scrypt in
the password pool, competing with the guessers), and what the hostile client got. Usage::

    .venv/bin/python bench/abuse_bench.py [--messages 3000] [--legit-sessions 4]
        [--per-session 50] [--size 5120] [--idle 2000] [--guessers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.passwords import hash_password  # noqa: E402

USER = "bench-app"
FRESH_LOGINS = 10
"""Logins per phase as users never seen before, so each one pays scrypt in the pool."""
PASSWORD = "bench password 17"
CONFIG = """
[gateway]
hostname = "bench.test"
data_dir = "{data}"
log_level = "warning"

[[smtp.listeners]]
name = "sub"
port = {port}
tls = "none"
insecure_auth = true

[tenants.bench]
sending_domains = ["example.com"]

[[tenants.bench.smtp_users]]
username = "{user}"
password_hash = "{hash}"
{fresh_users}
[delivery]
providers = ["capture"]

[providers.capture]
type = "capture"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await reader.readline()).decode()
        if not line or line[3:4] != "-":
            return line


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
    writer.write(line.encode() + b"\r\n")
    return await reply(reader)


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


# --- the legitimate client ----------------------------------------------------------------------


async def legit(port: int, messages: int, sessions: int, per_session: int, size: int) -> dict:
    body = (
        "From: app@example.com\r\nTo: user@example.org\r\nSubject: bench\r\n\r\n"
        + ("x" * 78 + "\r\n") * (size // 80)
        + "."
    )
    logins: list[float] = []
    latencies: list[float] = []
    left = [messages]
    failures: collections.Counter[str] = collections.Counter()

    async def session() -> None:
        while left[0] > 0:
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                greeting = await reply(reader)
                if not greeting.startswith("220"):
                    failures[greeting[:9]] += 1
                    await asyncio.sleep(0.1)
                    continue
                await command(reader, writer, "EHLO legit.bench")
                auth = await command(reader, writer, plain(USER, PASSWORD))
                if not auth.startswith("235"):
                    failures[auth[:9]] += 1
                    continue
                logins.append(time.perf_counter() - started)
                for _ in range(per_session):
                    if left[0] <= 0:
                        break
                    left[0] -= 1
                    sent = time.perf_counter()
                    await command(reader, writer, "MAIL FROM:<app@example.com>")
                    await command(reader, writer, "RCPT TO:<user@example.org>")
                    await command(reader, writer, "DATA")
                    done = await command(reader, writer, body)
                    if done.startswith("250"):
                        latencies.append(time.perf_counter() - sent)
                    else:
                        failures[done[:9]] += 1
                await command(reader, writer, "QUIT")
            finally:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    elapsed = time.perf_counter() - started
    return {
        "messages_per_s": len(latencies) / elapsed,
        "accepted": len(latencies),
        "auth_p50_ms": 1000 * statistics.median(logins),
        "auth_p99_ms": 1000 * quantile(logins, 0.99),
        "message_p50_ms": 1000 * statistics.median(latencies),
        "message_p99_ms": 1000 * quantile(latencies, 0.99),
        "failures": dict(failures),
    }


async def fresh_logins(port: int, first: int) -> float:
    """The slowest of ``FRESH_LOGINS`` logins (connect to ``235``) as users not yet cached."""
    slowest = 0.0
    for n in range(first, first + FRESH_LOGINS):
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader)
        await command(reader, writer, "EHLO legit.bench")
        answer = await command(reader, writer, plain(f"{USER}-{n}", PASSWORD))
        assert answer.startswith("235"), answer
        slowest = max(slowest, time.perf_counter() - started)
        writer.close()
    return 1000 * slowest


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the hostile client (a child process) -------------------------------------------------------


async def hostile(port: int, idle: int, guessers: int, seconds: float, out: str) -> dict:
    """Hold ``idle`` connections, then guess until stdin closes (or ``seconds`` pass)."""
    raise_fd_limit(idle + 1000)
    stop = time.monotonic() + seconds
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stopped.set)), daemon=True
    ).start()
    held: list[asyncio.StreamWriter] = []
    replies: collections.Counter[str] = collections.Counter()
    for i in range(idle):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(f"127.0.0.{2 + i % 10}", 0)
            )
        except OSError:
            replies["connect error"] += 1
            continue
        greeting = (await reply(reader))[:3]
        replies["idle " + greeting] += 1
        if greeting == "220":
            held.append(writer)
        else:
            writer.close()
    await asyncio.to_thread(os.close, os.open(out + ".ready", os.O_CREAT | os.O_WRONLY))

    async def guess(n: int) -> None:
        attempt = 0
        while time.monotonic() < stop and not stopped.is_set():
            source = f"127.0.1.{1 + (n * 31 + attempt) % 250}"
            attempt += 1
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source, 0)
                )
            except OSError:
                replies["guess connect error"] += 1
                continue
            try:
                greeting = await reply(reader)
                if not greeting.startswith("220"):
                    replies["guess " + greeting[:9]] += 1
                    continue
                await command(reader, writer, "EHLO guesser.bench")
                for k in range(4):
                    answer = await command(reader, writer, plain(USER, f"guess {attempt} {k}"))
                    replies["auth " + answer[:9]] += 1
                    if not answer or answer.startswith("421"):
                        break
            except (ConnectionError, OSError):
                replies["guess reset"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(guess(n) for n in range(guessers)))
    for writer in held:
        writer.close()
    return {"held": len(held), "replies": dict(replies)}


# --- the harness ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--legit-sessions", type=int, default=4)
    parser.add_argument("--per-session", type=int, default=50)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--guessers", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="abuse-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    port = free_port()
    config = tmp / "gateway.toml"
    password_hash = hash_password(PASSWORD)
    fresh_users = "".join(
        f'[[tenants.bench.smtp_users]]\nusername = "{USER}-{n}"\n'
        f'password_hash = "{password_hash}"\n'
        for n in range(2 * FRESH_LOGINS)
    )
    config.write_text(
        CONFIG.format(
            data=tmp / "data", port=port, user=USER, hash=password_hash, fresh_users=fresh_users
        )
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "-c", str(config), "serve"],
        cwd=tmp,
        stdout=open(tmp / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port)
        shape = (args.messages, args.legit_sessions, args.per_session, args.size)
        unloaded = asyncio.run(legit(port, *shape))
        unloaded["fresh_login_ms"] = asyncio.run(fresh_logins(port, 0))
        out = tmp / "hostile"
        attacker = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "hostile",
                str(port),
                str(args.idle),
                str(args.guessers),
                "600",
                str(out),
            ],
            stdin=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while not Path(f"{out}.ready").exists():
                if time.monotonic() > deadline or attacker.poll() is not None:
                    raise SystemExit("the hostile client did not get going")
                time.sleep(0.1)
            time.sleep(2)  # let the guessers reach full speed: the load is the point
            loaded = asyncio.run(legit(port, *shape))
            loaded["fresh_login_ms"] = asyncio.run(fresh_logins(port, FRESH_LOGINS))
            loaded["gateway_fds"] = len(os.listdir(f"/proc/{server.pid}/fd"))
        finally:
            assert attacker.stdin is not None
            attacker.stdin.close()
            attacker.wait(60)
        summary = Path(f"{out}.json")
        hostile_summary = json.loads(summary.read_text()) if summary.exists() else {}
    finally:
        server.terminate()
        server.wait(30)
    report(args, unloaded, loaded, hostile_summary)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("the gateway did not start")


def report(args: argparse.Namespace, unloaded: dict, loaded: dict, hostile: dict) -> None:
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'':22}{'unloaded':>12}{'under attack':>14}")
    for key in (
        "messages_per_s",
        "auth_p50_ms",
        "auth_p99_ms",
        "message_p50_ms",
        "message_p99_ms",
        "fresh_login_ms",
        "accepted",
    ):
        print(f"{key:22}{unloaded[key]:>12.1f}{loaded[key]:>14.1f}")
    print("legit failures:", unloaded["failures"], loaded["failures"])
    print("gateway file descriptors under attack:", loaded["gateway_fds"])
    print("hostile:", json.dumps(hostile))


if __name__ == "__main__":
    if sys.argv[1:2] == ["hostile"]:
        port, idle, guessers, seconds, out = sys.argv[2:7]
        result = asyncio.run(hostile(int(port), int(idle), int(guessers), float(seconds), out))
        Path(f"{out}.json").write_text(json.dumps(result))
    else:
        main()
