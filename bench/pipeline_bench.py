"""Benchmark the delivery pipeline: DKIM signatures per second on one core, and messages per
second through the full default pipeline to a local SMTP sink.

    .venv/bin/python bench/pipeline_bench.py [--messages 2000] [--seconds 3]
    .venv/bin/python bench/pipeline_bench.py --dkim-only [--seconds 1] [--rounds 5]

1. DKIM: RSA-2048 and ed25519 — the bare OpenSSL signature, and the whole ``gateway_sign``
   work per message (parse, canonicalize, hash, sign) on a 5 KB HTML message — next to
   dkimpy's own pure-Python signer for comparison.
2. Pipeline: messages are put in the spool first, then one worker's dispatcher runs every
   delivery through suppression, click tracking, open pixel, List-Unsubscribe and DKIM
   (RSA-2048), and relays it over SMTP to an aiosmtpd sink in another thread of this process.
   SMTP ingress is measured separately by ``bench/smtp_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dkim  # noqa: E402
from aiosmtpd.smtp import SMTP  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils  # noqa: E402
from gateway_plugins.dkim import Settings, Signer  # noqa: E402

from gateway.config import parse_config  # noqa: E402
from gateway.message import DeliveryStatus, Message, new_message_id  # noqa: E402
from gateway.server import Gateway  # noqa: E402
from gateway.store.base import DeliveryFilter  # noqa: E402


def html_message(links: int = 10, size: int = 5000) -> bytes:
    anchors = "".join(
        f'<p>Item {i}: <a href="https://shop.example.com/p/{i}?utm=news">see product {i}</a></p>\n'
        for i in range(links)
    )
    filler = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 3 + "</p>\n"
    body = f"<html><body>\n<h1>Newsletter</h1>\n{anchors}"
    while len(body) < size - 200:
        body += filler
    body += "</body></html>\n"
    head = (
        "From: Example News <news@example.com>\r\n"
        "To: reader@example.org\r\n"
        "Subject: This week's picks\r\n"
        "Message-ID: <bench@example.com>\r\n"
        "Precedence: bulk\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n"
    )
    return (head + body.replace("\n", "\r\n")).encode()


def rate(work: Callable[[], Any], seconds: float) -> float:
    done = 0
    started = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            work()
        done += 20
    return done / (time.process_time() - started)


def write_key(directory: Path, name: str, key: Any) -> None:
    (directory / "example.com").mkdir(parents=True, exist_ok=True)
    (directory / "example.com" / name).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def bench_dkim(key_dir: Path, raw: bytes, seconds: float) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    write_key(key_dir, "rsa.pem", rsa_key)
    write_key(key_dir, "ed.pem", ed_key)
    signer = Signer(Settings(key_dir=str(key_dir)))
    keys = {k.selector: k for k in signer.keys["example.com"]}
    digest = os.urandom(32)
    now = time.time()
    print("DKIM, per core (CPU time of this process):")
    figures = [
        (
            "RSA-2048 signature (OpenSSL)",
            lambda: rsa_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())),
        ),
        ("RSA-2048 gateway_sign, 5 KB", lambda: signer.sign(raw, [keys["rsa"]], now)),
        ("ed25519 signature (OpenSSL)", lambda: ed_key.sign(digest)),
        ("ed25519 gateway_sign, 5 KB", lambda: signer.sign(raw, [keys["ed"]], now)),
        (
            "RSA + ed25519 dual gateway_sign",
            lambda: signer.sign(raw, [keys["rsa"], keys["ed"]], now),
        ),
    ]
    for label, work in figures:
        print(f"  {label:34s} {rate(work, seconds):9,.0f} /s")
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pure = rate(lambda: dkim.sign(raw, b"rsa", b"example.com", pem), min(seconds, 2.0))
    print(f"  {'RSA-2048 dkimpy.sign (pure Python)':34s} {pure:9,.0f} /s")


def dkim_ratio(key_dir: Path, raw: bytes, seconds: float, rounds: int) -> None:
    """RSA-2048 ``gateway_sign`` against the raw OpenSSL signature it contains, per
    CPU-second, measured alternately ``rounds`` times so both meet the same machine load."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_key(key_dir, "rsa.pem", rsa_key)
    signer = Signer(Settings(key_dir=str(key_dir)))
    key = signer.keys["example.com"][0]
    digest = os.urandom(32)
    now = time.time()
    openssl, gateway = [], []
    for _ in range(rounds):
        openssl.append(
            rate(
                lambda: rsa_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())),
                seconds,
            )
        )
        gateway.append(rate(lambda: signer.sign(raw, [key], now), seconds))
    ratio = statistics.median(g / o for g, o in zip(gateway, openssl, strict=True))
    print(
        f"DKIM RSA-2048, medians of {rounds} interleaved rounds of {seconds:g} s, {len(raw):,} B"
        f" HTML message: gateway_sign {statistics.median(gateway):,.0f} signatures/CPU-s,"
        f" raw OpenSSL {statistics.median(openssl):,.0f} signatures/CPU-s"
        f" = {ratio:.0%} of OpenSSL"
    )


class Sink:
    """An aiosmtpd server in its own thread that only counts messages."""

    def __init__(self) -> None:
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 OK"

    def start(self) -> None:
        self.thread.start()

        async def listen() -> asyncio.Server:
            return await self.loop.create_server(
                lambda: SMTP(self, hostname="sink.bench", loop=self.loop), "127.0.0.1", 0
            )

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


PIPELINE = """
[gateway]
hostname = "gw.bench"
data_dir = "{data}"

[smtp]
listeners = []

[tracking]
base_url = "https://t.example.com"
[tracking.keys]
k1 = "bench-key-0123456789abcdef0123456789abcdef"

[delivery]
providers = ["relay"]
concurrency = 100
batch_size = 500

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
pool_size = 20

[plugins.click_tracking]
[plugins.open_pixel]
[plugins.list_unsubscribe]
[plugins.dkim]
key_dir = "{keys}"
selectors = ["rsa"]
"""


async def bench_pipeline(workdir: Path, raw: bytes, messages: int) -> None:
    sink = Sink()
    sink.start()
    config = parse_config(
        PIPELINE.format(data=workdir / "data", port=sink.port, keys=workdir / "keys")
    )
    gateway = Gateway(config)
    await gateway.start(deliver=False)
    try:
        plugins = [name for name, plugin in reversed(gateway.pm.list_name_plugin()) if plugin]
        now = gateway.clock.now()
        await asyncio.gather(
            *(
                gateway.store.enqueue(
                    Message(
                        id=new_message_id(),
                        tenant="default",
                        mail_from="bounce@example.com",
                        raw=raw,
                        created_at=now,
                    ),
                    [f"reader{i}@example.org"],
                    expires_at=now + 3600,
                )
                for i in range(messages)
            )
        )
        started = time.perf_counter()
        cpu = time.process_time()
        processed = await gateway.dispatcher.run_once()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        delivered = await gateway.store.list_deliveries(
            DeliveryFilter(statuses=[DeliveryStatus.DELIVERED], limit=messages)
        )
    finally:
        await gateway.stop()
        sink.stop()
    print(f"Pipeline ({', '.join(plugins)}), {len(raw):,} B HTML with 10 links, one worker:")
    print(f"  {processed:,} processed, {len(delivered):,} delivered, {sink.count:,} at the sink")
    print(f"  {processed / elapsed:9,.0f} msgs/s wall clock ({elapsed:.2f} s)")
    print(f"  {processed / cpu:9,.0f} msgs/s per core of gateway+sink CPU ({cpu:.2f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--dkim-only",
        action="store_true",
        help="only gateway_sign against raw OpenSSL RSA-2048, interleaved (smtp_bench --dkim)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --dkim-only")
    args = parser.parse_args()
    raw = html_message()
    if args.dkim_only:
        with tempfile.TemporaryDirectory() as tmp:
            dkim_ratio(Path(tmp) / "keys", raw, args.seconds, args.rounds)
        return 0
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bench_dkim(workdir / "keys", raw, args.seconds)
        print()
        asyncio.run(bench_pipeline(workdir, raw, args.messages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
