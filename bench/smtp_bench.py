"""SMTP relay throughput on loopback: the gateway against stock Postfix, same harness.

Each run starts a fresh server (the gateway, or a private Postfix instance) that relays to
Postfix's ``smtp-sink`` on another loopback port, drives it with one load client
(``smtp-source`` or the asyncio client in this file), and reports accept and delivery rates,
accept latency, server CPU time and memory. See ``bench/README.md``.

Usage::

    .venv/bin/python bench/smtp_bench.py [--size 5120] [--sessions 20] [--messages 5000]
        [--workers 2 | --workers 1,2] [--target gateway|postfix|both]
        [--modes new-connection,reuse,single-session,pipeline] [--dkim]
        [--clients smtp-source,python,pipelined] [--repeat N] [--gateway-rev HEAD]
        [--profile DIR]

``python bench/smtp_bench.py client ...`` is the asyncio load client on its own; the harness
runs it as a subprocess so its CPU is not shared with the harness's sampling threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import email.utils
import functools
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parent.parent
GATEWAY_BIN = REPO / ".venv" / "bin" / "gateway"
SBIN = Path("/usr/sbin")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "from@example.com"
RECIPIENT = "to@example.org"
HELO_NAME = "bench.localhost"
CLIENTS = ("smtp-source", "python", "pipelined")
DEFAULT_CLIENTS = ("smtp-source",)
MODES = ("new-connection", "reuse", "single-session", "pipeline")
"""How clients load the server: a new connection per message (what most applications do;
the headline figures), ``--sessions`` connections each reused, one session sending one
message at a time, and the full default pipeline on an HTML newsletter (new connection per
message) against plain Postfix and the plain gateway."""
DEFAULT_MODES = ("new-connection",)


@dataclass(frozen=True)
class Load:
    """What one run's client does."""

    client: str
    mode: str
    sessions: int
    messages: int
    size: int
    timeout: float

    @property
    def reconnect(self) -> bool:
        """A new TCP connection (and EHLO/HELO) for every message."""
        return self.mode in ("new-connection", "pipeline")

    @property
    def html(self) -> bool:
        return self.mode == "pipeline"

    @property
    def label(self) -> str:
        return f"{self.client} {self.mode}"


# --- /proc accounting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """One process as ``/proc/<pid>/stat`` shows it; CPU times in seconds."""

    pid: int
    ppid: int
    name: str
    own_cpu: float
    """utime + stime of the process (all its threads)."""
    reaped_cpu: float
    """cutime + cstime: children that exited and were waited for."""


def read_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    own, reaped = (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK
    return ProcStat(pid, int(fields[1]), name, own, reaped)


def process_tree(root: int) -> list[ProcStat]:
    """``root`` and all its live descendants (zombies included, until reaped)."""
    table: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                table[stat.pid] = stat
    if root not in table:
        return []
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(table[pid])
        todo.extend(children.get(pid, []))
    return found


def tree_cpu(root: int) -> dict[int, ProcStat]:
    """A CPU snapshot of the tree, keyed by PID."""
    return {p.pid: p for p in process_tree(root)}


def cpu_delta(before: dict[int, ProcStat], after: dict[int, ProcStat]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by process name.

    A process that exited and was reaped in between shows up in its parent's ``reaped_cpu``
    (its whole lifetime); what it had used before the first snapshot is subtracted there, so
    the sum over names is exactly ``sum(after) - sum(before)``.
    """
    by_name: dict[str, float] = {}

    def add(name: str, seconds: float) -> None:
        by_name[name] = by_name.get(name, 0.0) + seconds

    for pid, now in after.items():
        then = before.get(pid)
        own_before = then.own_cpu if then is not None and then.name == now.name else 0.0
        reaped_before = then.reaped_cpu if then is not None and then.name == now.name else 0.0
        add(now.name, now.own_cpu - own_before)
        add("(exited children)", now.reaped_cpu - reaped_before)
    for pid, then in before.items():
        if pid not in after:
            add("(exited children)", -then.own_cpu - then.reaped_cpu)
    return {name: seconds for name, seconds in by_name.items() if abs(seconds) >= 0.005}


def _kb_field(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class MemorySampler:
    """Samples the server's process tree a few times a second: peak summed RSS and PSS (PSS
    splits shared pages between the processes that map them, so forked and multi-process
    servers are not over-counted), and the last VmHWM seen of every process."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.peak_processes = 0
        self.hwm_kb: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        rss = pss = 0
        processes = process_tree(self.root)
        for proc in processes:
            rss += _kb_field(f"/proc/{proc.pid}/smaps_rollup", "Rss:")
            pss += _kb_field(f"/proc/{proc.pid}/smaps_rollup", "Pss:")
            hwm = _kb_field(f"/proc/{proc.pid}/status", "VmHWM:")
            if hwm:
                self.hwm_kb[proc.pid] = (proc.name, hwm)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_processes = max(self.peak_processes, len(processes))


def machine_busy() -> float:
    """CPU seconds all CPUs have spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def harness_cpu() -> float:
    """CPU seconds of this process (all threads) and of its children reaped so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class Background:
    """CPU used on the machine by everything this benchmark did not start, over a window:
    the busy time of all CPUs less the harness, its clients and the given process trees."""

    def __init__(self, *roots: int) -> None:
        self.roots = roots
        self.started = time.monotonic()
        self._busy = machine_busy()
        self._ours = self._ours_now()

    def _ours_now(self) -> float:
        trees = sum(p.own_cpu + p.reaped_cpu for root in self.roots for p in process_tree(root))
        return harness_cpu() + trees

    def cores(self) -> float:
        """Average number of cores the rest of the machine kept busy since the start."""
        elapsed = time.monotonic() - self.started
        others = (machine_busy() - self._busy) - (self._ours_now() - self._ours)
        return max(others, 0.0) / elapsed if elapsed > 0 else 0.0


def wait_for_quiet(roots: tuple[int, ...], limit: float, threshold: float = 0.15) -> float:
    """Wait up to ``limit`` seconds for a 1 s window in which the rest of the machine uses
    less than ``threshold`` cores; returns the last window's figure."""
    deadline = time.monotonic() + limit
    while True:
        window = Background(*roots)
        time.sleep(1.0)
        cores = window.cores()
        if cores < threshold or time.monotonic() >= deadline:
            return cores


def settle(root: int, timeout: float = 15.0, idle_cpu: float = 0.02) -> None:
    """Wait until the tree uses less than ``idle_cpu`` seconds of CPU in two 0.25 s windows in a
    row, so that bookkeeping after the last delivery is counted for every server alike."""
    deadline = time.monotonic() + timeout
    quiet = 0
    last = sum(p.own_cpu + p.reaped_cpu for p in process_tree(root))
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.25)
        now = sum(p.own_cpu + p.reaped_cpu for p in process_tree(root))
        quiet = quiet + 1 if now - last < idle_cpu else 0
        last = now


# --- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, so that no outgoing
    connection can take it as its local port before the server binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(500):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found below the ephemeral range")


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``127.0.0.1:port`` (one per SO_REUSEPORT worker)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":
                count += 1
    return count


def wait_listening(
    port: int, sockets: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while listening_sockets(port) < sockets:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM this one PID, then SIGKILL it if it has not exited within ``grace``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(5)


def become_subreaper() -> None:
    """Orphans of the servers started here (Postfix daemons outliving their master) are
    re-parented to this process rather than to init, so ``reap_orphan`` can wait for them."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap_orphan(pid: int, grace: float = 10.0) -> None:
    """Wait for a descendant this process adopted; SIGKILL it if it outlives ``grace``."""
    deadline = time.monotonic() + grace
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.05)
    except (ChildProcessError, ProcessLookupError):
        pass


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --- Postfix install and the sink ---------------------------------------------------------------


def ensure_postfix() -> None:
    """Install Debian's ``postfix`` (for ``smtp-source``, ``smtp-sink`` and the comparison)
    when missing, with service start-up denied so no system Postfix is left on port 25."""
    if all((SBIN / tool).exists() for tool in ("smtp-source", "smtp-sink", "postfix")):
        return
    if os.geteuid() != 0:
        raise SystemExit("postfix is not installed; run as root, or apt-get install postfix")
    print("installing postfix (apt-get) ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    created_policy = not POLICY_RC.exists()
    if created_policy:
        POLICY_RC.write_text("#!/bin/sh\n# smtp_bench: no service start-up on install\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            check=True,
        )
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], check=True, env=env)
    finally:
        if created_policy:
            POLICY_RC.unlink()
    if listening_sockets(25):
        print("warning: something listens on 127.0.0.1:25 after the install", file=sys.stderr)


class Sink:
    """``smtp-sink -c`` on a loopback port; counts the messages it has received (``mesg=N``)."""

    _COUNTER = re.compile(rb"mesg=(\d+)")

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.count = 0
        self._target = 0
        self._reached_at: float | None = None
        self._changed = threading.Condition()
        self._log = open(workdir / "smtp-sink.log", "wb")
        self.process = subprocess.Popen(
            [
                str(SBIN / "smtp-sink"),
                "-c",
                "-4",
                "-u",
                "nobody",
                "-m",
                "512",
                f"127.0.0.1:{self.port}",
                "1000",
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="sink-reader", daemon=True)
        self._reader.start()
        wait_listening(self.port, 1, self.process, "smtp-sink")

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        tail = b""
        while chunk := os.read(fd, 65536):
            counters = self._COUNTER.findall(tail + chunk)
            tail = chunk[-32:]
            if not counters:
                continue
            now = time.monotonic()
            with self._changed:
                self.count = max(self.count, int(counters[-1]))
                if self._reached_at is None and self._target and self.count >= self._target:
                    self._reached_at = now
                self._changed.notify_all()

    def expect(self, total: int) -> None:
        """From now on, note when the counter reaches ``total``."""
        with self._changed:
            self._target = total
            self._reached_at = time.monotonic() if self.count >= total else None

    def wait(self, deadline: float) -> float | None:
        """The monotonic time the expected total was reached, or ``None`` at ``deadline``."""
        with self._changed:
            while self._reached_at is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    return None
                self._changed.wait(min(left, 0.5))
            return self._reached_at

    def stop(self) -> None:
        stop_process(self.process, grace=5)
        self._reader.join(5)
        self._log.close()


# --- servers under test -------------------------------------------------------------------------


class Server(Protocol):
    label: str
    port: int

    @property
    def root_pid(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def leftovers(self) -> str: ...


class GatewayServer:
    """``gateway serve`` with one plain loopback listener, relaying to the sink."""

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        *,
        workers: int,
        pool_size: int,
        concurrency: int,
        source: Path | None = None,
        pipeline: bool = False,
    ) -> None:
        self.workdir = workdir
        self.source = source
        self.workers = workers
        self.port = free_port()
        self.label = f"gateway w={workers}"
        self.config = workdir / "gateway.toml"
        self.config.write_text(
            f"""\
[gateway]
hostname = "{HELO_NAME}"
data_dir = "{workdir / "data"}"
workers = {workers}
log_level = "warning"

[[smtp.listeners]]
name = "bench"
address = "127.0.0.1"
port = {self.port}
tls = "none"
insecure_auth = true

[tenants.bench]
smtp_networks = ["127.0.0.1/32"]

[delivery]
providers = ["sink"]
concurrency = {concurrency}

[providers.sink]
type = "smtp"
host = "127.0.0.1"
port = {sink_port}
tls = "none"
pool_size = {pool_size}
"""
        )
        if pipeline:
            self.label += " +pipeline"
            with open(self.config, "a") as config:
                config.write(pipeline_config(workdir))
        self.process: subprocess.Popen[bytes] | None = None
        self._log = workdir / "gateway.log"

    @property
    def root_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _env(self) -> dict[str, str]:
        """The environment that makes Python import the gateway sources under test."""
        if self.source is None:
            return dict(os.environ)
        return {**os.environ, "PYTHONPATH": str(self.source)}

    def start(self) -> None:
        program = [str(GATEWAY_BIN)] if self.source is None else [sys.executable, "-m", "gateway"]
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                [*program, "-c", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,
                env=self._env(),
            )
        try:
            wait_listening(self.port, self.workers, self.process, "gateway")
        except RuntimeError as e:
            tail = self._log.read_text(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError(f"{e}; {self._log.name} ends with:\n" + "\n".join(tail)) from None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def leftovers(self) -> str:
        """Delivery counts from the gateway's own spool (read after it stopped, with
        ``SqliteStore.counts()`` of the sources under test), and errors it logged."""
        done = subprocess.run(
            [sys.executable, "-c", _SPOOL_COUNTS, str(self.workdir / "data" / "spool")],
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=60,
        )
        found = done.stdout.strip() or done.stderr.strip().splitlines()[-1:]
        problems = self._log.read_text(errors="replace").count(" ERROR ")
        return f"spool {found}, {problems} ERROR lines in gateway.log"


def pipeline_config(workdir: Path) -> str:
    """The full default plugin pipeline: suppression (always on), click tracking, open pixel,
    List-Unsubscribe on every message, and DKIM with a fresh RSA-2048 key for example.com."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_dir = workdir / "dkim"
    (key_dir / "example.com").mkdir(parents=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (key_dir / "example.com" / "bench.pem").write_bytes(pem)
    return f"""
[tracking]
base_url = "https://t.bench.example"
signing_key = "k1"

[tracking.keys]
k1 = "{os.urandom(32).hex()}"

[plugins.click_tracking]
[plugins.open_pixel]
[plugins.list_unsubscribe]
mailto = "unsubscribe@bench.example"
all_bulk = true

[plugins.dkim]
key_dir = "{key_dir}"
selectors = ["bench"]
"""


_SPOOL_COUNTS = """\
import asyncio, sys
from pathlib import Path
from gateway.store.sqlite import SqliteStore

async def main():
    store = SqliteStore(Path(sys.argv[1]), all_shards=True)
    await store.open()
    try:
        print({k.value: v for k, v in (await store.counts()).items() if v})
    finally:
        await store.close()

asyncio.run(main())
"""


class PostfixServer:
    """A private Postfix instance (own config, queue and data directories) relaying to the
    sink. Stock settings except: listen on a loopback port, relay everything to the sink, no
    local delivery, no chroot, no DNS, and log to a file in the work directory."""

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.label = "postfix"
        self.config_dir = workdir / "etc"
        self.queue_dir = workdir / "queue"
        self.process: subprocess.Popen[bytes] | None = None
        daemon_dir = subprocess.run(
            [str(SBIN / "postconf"), "-dh", "daemon_directory"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.master = Path(daemon_dir) / "master"
        self._write_config(sink_port)

    def _write_config(self, sink_port: int) -> None:
        for directory in (self.workdir.parent, self.workdir):
            directory.chmod(0o755)
        self.config_dir.mkdir()
        self.queue_dir.mkdir(mode=0o755)
        data_dir = self.workdir / "data"
        data_dir.mkdir()
        shutil.chown(data_dir, user="postfix")
        (self.config_dir / "main.cf").write_text(
            f"""\
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.workdir / "data"}
meta_directory = /etc/postfix
myhostname = {HELO_NAME}
mydomain = localhost
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink_port}
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
maillog_file = {self.workdir / "maillog"}
maillog_file_prefixes = {self.workdir}
"""
        )
        master_cf = Path("/usr/share/postfix/master.cf.dist")
        if not master_cf.exists():
            master_cf = Path("/etc/postfix/master.cf")
        lines = []
        for line in master_cf.read_text().splitlines():
            fields = line.split()
            if line[:1] not in ("", "#", " ", "\t") and len(fields) >= 8:
                if fields[:2] == ["smtp", "inet"]:
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"
                line = " ".join(fields)
            lines.append(line)
        (self.config_dir / "master.cf").write_text("\n".join(lines) + "\n")

    @property
    def root_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        check = subprocess.run(
            [str(SBIN / "postfix"), "-c", str(self.config_dir), "check"], capture_output=True
        )
        if check.returncode:
            maillog = self.workdir / "maillog"
            detail = maillog.read_text()[-2000:] if maillog.exists() else check.stderr.decode()
            raise RuntimeError(f"postfix check failed for {self.config_dir}: {detail}")
        with open(self.workdir / "master.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(self.master), "-c", str(self.config_dir), "-s"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_listening(self.port, 1, self.process, "postfix master")

    def stop(self) -> None:
        if self.process is None:
            return
        children = [p.pid for p in process_tree(self.process.pid) if p.pid != self.process.pid]
        stop_process(self.process)
        for pid in children:
            reap_orphan(pid)

    def leftovers(self) -> str:
        """Queue files still present, per queue."""
        found = {}
        for queue in ("maildrop", "incoming", "active", "deferred", "hold"):
            directory = self.queue_dir / queue
            if directory.is_dir():
                found[queue] = sum(len(files) for _, _, files in os.walk(directory))
        return f"queue files {found}"


# --- load clients -------------------------------------------------------------------------------


@dataclass
class ClientRun:
    """What one load client reports."""

    accepted: int
    failed: int
    started: float
    """``time.monotonic()`` (CLOCK_MONOTONIC, shared by all processes) at the first connect."""
    elapsed: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: list[str] = field(default_factory=list)


def run_smtp_source(port: int, load: Load) -> ClientRun:
    """Postfix's ``smtp-source``: ``load.sessions`` concurrent sessions, each reused for the
    next message (``-d``) unless the load reconnects for every message."""
    command = [
        str(SBIN / "smtp-source"),
        "-c",
        *([] if load.reconnect else ["-d"]),
        "-s",
        str(load.sessions),
        "-l",
        str(load.size),
        "-m",
        str(load.messages),
        "-M",
        HELO_NAME,
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"127.0.0.1:{port}",
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=load.timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        out, err = process.communicate()
    elapsed = time.monotonic() - started
    counters = re.findall(rb"(\d+)", out)
    accepted = int(counters[-1]) if counters else 0
    errors = err.decode(errors="replace").strip().splitlines()[-5:]
    if process.returncode:
        errors.append(f"smtp-source exit status {process.returncode}")
    return ClientRun(accepted, load.messages - accepted, started, elapsed, errors=errors)


def run_python_client(port: int, load: Load) -> ClientRun:
    """One of the asyncio clients below, in a child process."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "client",
        "--port",
        str(port),
        "--size",
        str(load.size),
        "--sessions",
        str(load.sessions),
        "--messages",
        str(load.messages),
        "--timeout",
        str(load.timeout),
        *(["--html"] if load.html else []),
        *(["--pipelined"] if load.client == "pipelined" else []),
        *(["--reconnect"] if load.reconnect else []),
    ]
    try:
        done = subprocess.run(command, capture_output=True, timeout=load.timeout + 30)
    except subprocess.TimeoutExpired:
        return ClientRun(
            0,
            load.messages,
            time.monotonic(),
            load.timeout,
            errors=["python client did not finish"],
        )
    if done.returncode:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        return ClientRun(0, load.messages, time.monotonic(), 0.0, errors=tail)
    return ClientRun(**json.loads(done.stdout))


def make_message(index: int, body: bytes) -> bytes:
    head = (
        f"From: Bench <{SENDER}>\r\n"
        f"To: <{RECIPIENT}>\r\n"
        f"Subject: bench message {index}\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{index}.{os.getpid()}@{HELO_NAME}>\r\n"
        "\r\n"
    )
    return head.encode() + body


def newsletter(index: int, size: int, links: int = 10) -> bytes:
    """A ``size``-byte HTML newsletter with ``links`` links, as the pipeline benchmark sends."""
    head = (
        f"From: Example News <{SENDER}>\r\n"
        f"To: <{RECIPIENT}>\r\n"
        f"Subject: This week's picks {index}\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{index}.{os.getpid()}@{HELO_NAME}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n"
    )
    return head.encode() + _newsletter_body(size, links)


@functools.lru_cache(maxsize=2)
def _newsletter_body(size: int, links: int) -> bytes:
    anchors = "".join(
        f'<p>Item {i}: <a href="https://shop.example.com/p/{i}?utm=news">see product {i}</a>'
        "</p>\r\n"
        for i in range(links)
    )
    filler = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 3 + "</p>\r\n"
    body = f"<html><body>\r\n<h1>Newsletter</h1>\r\n{anchors}"
    while len(body) < size - 200:
        body += filler
    return (body + "</body></html>\r\n").encode()


def make_body(size: int) -> bytes:
    """``size`` bytes of 80-byte CRLF lines, like smtp-source's ``-l`` payload."""
    line = b"X" * 78 + b"\r\n"
    whole, rest = divmod(size, len(line))
    tail = b"X" * max(rest - 2, 0) + b"\r\n" if rest else b""
    return line * whole + tail


async def python_client(
    port: int,
    size: int,
    sessions: int,
    messages: int,
    limit: float,
    html: bool = False,
    reconnect: bool = False,
) -> ClientRun:
    """``sessions`` aiosmtplib connections send ``messages`` messages in all (with
    ``reconnect``, each message on a connection of its own, ended with QUIT); the latency of
    each is DATA sent → final 250 received."""
    import aiosmtplib

    body = make_body(size)
    latencies: list[float] = []
    errors: list[str] = []
    failed = 0
    next_index = 0
    started = time.monotonic()
    deadline = started + limit

    async def session() -> None:
        nonlocal next_index, failed
        client: aiosmtplib.SMTP | None = None
        while next_index < messages and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            try:
                if client is None or not client.is_connected:
                    client = aiosmtplib.SMTP(
                        hostname="127.0.0.1",
                        port=port,
                        local_hostname=HELO_NAME,
                        timeout=30,
                        start_tls=False,
                    )
                    await client.connect()
                await client.mail(SENDER)
                await client.rcpt(RECIPIENT)
                sent = time.perf_counter()
                content = newsletter(index, size) if html else make_message(index, body)
                await client.data(content)
                latencies.append(time.perf_counter() - sent)
                if reconnect:
                    await client.quit()
                    client = None
            except (aiosmtplib.SMTPException, OSError) as e:
                failed += 1
                if len(errors) < 5:
                    errors.append(f"message {index}: {e!r}")
                if client is not None:
                    client.close()
                client = None
        if client is not None and client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()

    try:
        await asyncio.wait_for(asyncio.gather(*(session() for _ in range(sessions))), limit)
    except TimeoutError:
        errors.append(f"stopped after {limit:.0f} s")
    elapsed = time.monotonic() - started
    latencies.sort()
    return ClientRun(
        accepted=len(latencies),
        failed=failed,
        started=started,
        elapsed=elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000 if latencies else None,
        p99_ms=percentile(latencies, 0.99) * 1000 if latencies else None,
        errors=errors,
    )


async def pipelined_client(
    port: int,
    size: int,
    sessions: int,
    messages: int,
    limit: float,
    html: bool = False,
    reconnect: bool = False,
) -> ClientRun:
    """A lean client on bare asyncio streams: like smtp-source, but it can send any content.
    Each session says EHLO once, then per message writes MAIL, RCPT and DATA together
    (RFC 2920 PIPELINING), reads their three replies, sends the content, reads the final one;
    with ``reconnect`` it connects, says EHLO and QUIT for every message.
    Latency: content sent → final reply."""
    body = make_body(size)
    latencies: list[float] = []
    errors: list[str] = []
    failed = 0
    next_index = 0
    started = time.monotonic()
    envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()

    async def reply(reader: asyncio.StreamReader) -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return line

    async def connection() -> None:
        """One connection: EHLO, then messages (just one with ``reconnect``), then QUIT."""
        nonlocal next_index, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reply(reader)
            writer.write(f"EHLO {HELO_NAME}\r\n".encode())
            await reply(reader)
            while next_index < messages:
                index = next_index
                next_index += 1
                content = newsletter(index, size) if html else make_message(index, body)
                writer.write(envelope)
                codes = [(await reply(reader))[:3] for _ in range(3)]
                if codes != [b"250", b"250", b"354"]:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"message {index}: {codes}")
                    continue
                sent = time.perf_counter()
                writer.write(content.replace(b"\r\n.", b"\r\n..") + b".\r\n")
                final = await reply(reader)
                if final.startswith(b"250"):
                    latencies.append(time.perf_counter() - sent)
                else:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"message {index}: {final!r}")
                if reconnect:
                    break
            writer.write(b"QUIT\r\n")
            await reply(reader)
        finally:
            writer.close()

    async def session() -> None:
        while next_index < messages:
            await connection()

    try:
        await asyncio.wait_for(asyncio.gather(*(session() for _ in range(sessions))), limit)
    except TimeoutError:
        errors.append(f"stopped after {limit:.0f} s")
    except (OSError, ConnectionError) as e:
        errors.append(repr(e))
    elapsed = time.monotonic() - started
    latencies.sort()
    return ClientRun(
        accepted=len(latencies),
        failed=failed,
        started=started,
        elapsed=elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000 if latencies else None,
        p99_ms=percentile(latencies, 0.99) * 1000 if latencies else None,
        errors=errors,
    )


# --- profiling -----------------------------------------------------------------------------------


class Profiler:
    """``py-spy record --gil`` on every gateway worker for the whole run: samples of the
    thread holding the GIL, i.e. where the Python-level CPU goes (time in system calls made
    without the GIL shows up as stime, not here). Collapsed stacks go to
    ``<dir>/<run>-<pid>.txt``, for flamegraph.pl or speedscope."""

    def __init__(self, out_dir: Path, run_name: str, root: int) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        tree = process_tree(root)
        workers = [p.pid for p in tree if p.pid != root] or [root]
        self.outputs = [out_dir / f"{run_name}-{pid}.txt" for pid in workers]
        self.processes = [
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "200",
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid, out in zip(workers, self.outputs, strict=True)
        ]
        time.sleep(1.0)

    def finish(self, top: int = 12) -> str:
        """Wait for py-spy (it stops with its target) and summarize the hottest frames."""
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(process, grace=5)
        return summarize_stacks(self.outputs, top)


_PLUMBING = re.compile(
    r"\((<frozen runpy>|asyncio/runners\.py|threading\.py|gateway/(cli|server|__main__)\.py)\)"
    r"|run_until_complete|run_forever|_run_once|Handle\._run"
)


def summarize_stacks(paths: list[Path], top: int) -> str:
    """Self and inclusive sample shares of the hottest frames in collapsed-stack files."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            total += samples
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]
            if frames:
                own[frames[-1]] = own.get(frames[-1], 0) + samples
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + samples
    if not total:
        return "  profile: no samples"
    lines = [f"  profile: {total} samples in {', '.join(str(p) for p in paths)}"]
    for title, table in (("self", own), ("inclusive", inclusive)):
        ranked = [
            kv for kv in sorted(table.items(), key=lambda kv: -kv[1]) if not _PLUMBING.search(kv[0])
        ]
        lines.append(f"  top {title}:")
        lines += [f"    {n / total:6.1%}  {frame}" for frame, n in ranked[:top]]
    return "\n".join(lines)


# --- one measured run ---------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    client: str
    run: ClientRun
    delivered: int
    deliver_seconds: float | None
    server_cpu: float
    cpu_by_name: dict[str, float]
    client_cpu: float
    peak_rss_mb: float
    peak_pss_mb: float
    peak_processes: int
    hwm_mb: list[tuple[str, float]]
    leftovers: str
    background_cores: float
    """Average cores used by processes outside the benchmark during the run."""
    profile: str = ""
    """py-spy summary when ``--profile`` was given (the run's figures are then perturbed)."""

    @property
    def accept_rate(self) -> float:
        return self.run.accepted / self.run.elapsed if self.run.elapsed else 0.0

    @property
    def deliver_rate(self) -> float | None:
        return self.delivered / self.deliver_seconds if self.deliver_seconds else None

    @property
    def cpu_ms_per_message(self) -> float:
        return self.server_cpu / max(self.delivered, 1) * 1000

    @property
    def complete(self) -> bool:
        return self.run.failed == 0 and self.deliver_seconds is not None


def measure(
    server: Server, sink: Sink, load: Load, args: argparse.Namespace, run_name: str
) -> Result:
    """Start ``server``, load it with ``client``, wait for every message at the sink, stop it."""
    profiler: Profiler | None = None
    try:
        server.start()
        settle(server.root_pid)
        roots = (server.root_pid, sink.process.pid)
        quiet = wait_for_quiet(roots, args.wait_idle) if args.wait_idle > 0 else 0.0
        if quiet >= 0.15:
            print(f"  (machine still busy: {quiet:.2f} cores used by other processes)", flush=True)
        if args.profile is not None and isinstance(server, GatewayServer):
            profiler = Profiler(args.profile, run_name, server.root_pid)
        background = Background(*roots)
        base = sink.count
        sink.expect(base + load.messages)
        cpu_before = tree_cpu(server.root_pid)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with MemorySampler(server.root_pid) as memory:
            run = (
                run_smtp_source(server.port, load)
                if load.client == "smtp-source"
                else run_python_client(server.port, load)
            )
            if run.accepted < load.messages:
                sink.expect(base + run.accepted)
            reached = sink.wait(time.monotonic() + args.phase_timeout)
            settle(server.root_pid)
        cpu_after = tree_cpu(server.root_pid)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        background_cores = background.cores()
        delivered = sink.count - base
    finally:
        server.stop()
    profile = profiler.finish() if profiler is not None else ""
    by_name = cpu_delta(cpu_before, cpu_after)
    client_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return Result(
        target=server.label,
        client=load.label,
        run=run,
        delivered=delivered,
        deliver_seconds=None if reached is None else reached - run.started,
        server_cpu=sum(by_name.values()),
        cpu_by_name=by_name,
        client_cpu=client_cpu,
        peak_rss_mb=memory.peak_rss_kb / 1024,
        peak_pss_mb=memory.peak_pss_kb / 1024,
        peak_processes=memory.peak_processes,
        hwm_mb=[(name, kb / 1024) for name, kb in memory.hwm_kb.values()],
        leftovers=server.leftovers(),
        background_cores=background_cores,
        profile=profile,
    )


# --- reporting ----------------------------------------------------------------------------------


def describe(result: Result, messages: int) -> str:
    run = result.run
    lines = [f"== {result.target} with {result.client} =="]
    lines.append(
        f"  accepted   {run.accepted}/{messages} in {run.elapsed:.2f} s"
        f" = {result.accept_rate:.0f} msg/s"
    )
    if result.deliver_seconds is None:
        lines.append(f"  delivered  {result.delivered} (NOT ALL within the time limit)")
    else:
        lines.append(
            f"  delivered  {result.delivered} in {result.deliver_seconds:.2f} s"
            f" = {result.deliver_rate:.0f} msg/s"
        )
    if run.p50_ms is not None:
        lines.append(f"  latency    DATA→250 p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms")
    per_msg = result.cpu_ms_per_message
    breakdown = ", ".join(
        f"{name} {seconds:.2f}"
        for name, seconds in sorted(result.cpu_by_name.items(), key=lambda kv: -kv[1])
    )
    lines.append(f"  server CPU {result.server_cpu:.2f} s = {per_msg:.2f} ms/msg  [{breakdown}]")
    lines.append(
        f"  client CPU {result.client_cpu:.2f} s; other processes on the machine used"
        f" {result.background_cores:.2f} cores on average"
    )
    hwm = sorted(result.hwm_mb, key=lambda x: -x[1])
    hwm_text = ", ".join(f"{name} {mb:.0f}" for name, mb in hwm[:6])
    more = f" (+{len(hwm) - 6} more)" if len(hwm) > 6 else ""
    lines.append(
        f"  memory     peak ΣRSS {result.peak_rss_mb:.0f} MB, peak ΣPSS"
        f" {result.peak_pss_mb:.0f} MB, up to {result.peak_processes} processes;"
        f" VmHWM MB: {hwm_text}{more}"
    )
    lines.append(f"  after      {result.leftovers}")
    for error in run.errors:
        lines.append(f"  error      {error}")
    if result.profile:
        lines.append(result.profile)
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    """One row per run."""
    header = (
        "| target | client | accepted msg/s | delivered msg/s | p50 ms | p99 ms |"
        " server CPU s | CPU ms/msg | peak ΣPSS MB | peak ΣRSS MB | other load (cores) |"
    )
    rows = [header, "|" + "---|" * 11]
    for r in results:
        deliver = f"{r.deliver_rate:.0f}" if r.deliver_rate else "incomplete"
        p50 = f"{r.run.p50_ms:.1f}" if r.run.p50_ms is not None else "-"
        p99 = f"{r.run.p99_ms:.1f}" if r.run.p99_ms is not None else "-"
        flag = ("" if r.complete else " ⚠") + (" (profiled)" if r.profile else "")
        rows.append(
            f"| {r.target}{flag} | {r.client} | {r.accept_rate:.0f} | {deliver} | {p50} | {p99} |"
            f" {r.server_cpu:.2f} | {r.cpu_ms_per_message:.2f} | {r.peak_pss_mb:.0f} |"
            f" {r.peak_rss_mb:.0f} | {r.background_cores:.2f} |"
        )
    return "\n".join(rows)


@dataclass
class Summary:
    """Medians over the repeated runs of one (target, client)."""

    target: str
    client: str
    runs: list[Result]

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    @property
    def accept_rate(self) -> float:
        return self.median([r.accept_rate for r in self.runs])

    @property
    def deliver_rate(self) -> float:
        return self.median([r.deliver_rate or 0.0 for r in self.runs])

    def spread(self, values: list[float]) -> str:
        return f"{self.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def summaries(results: list[Result]) -> list[Summary]:
    grouped: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        grouped.setdefault((r.target, r.client), []).append(r)
    return [Summary(target, client, runs) for (target, client), runs in grouped.items()]


def summary_table(results: list[Result]) -> str:
    """Median (min-max) over the repeats of each (target, client)."""
    rows = [
        "| target | client | runs | accepted msg/s | delivered msg/s | p50 ms | p99 ms |"
        " CPU ms/msg | other load (cores) |",
        "|" + "---|" * 9,
    ]
    for s in summaries(results):
        p50 = [r.run.p50_ms for r in s.runs if r.run.p50_ms is not None]
        p99 = [r.run.p99_ms for r in s.runs if r.run.p99_ms is not None]
        latency = f"{s.median(p50):.1f} | {s.median(p99):.1f}" if p50 and p99 else "- | -"
        rows.append(
            f"| {s.target} | {s.client} | {len(s.runs)} |"
            f" {s.spread([r.accept_rate for r in s.runs])} |"
            f" {s.spread([r.deliver_rate or 0.0 for r in s.runs])} |"
            f" {latency} |"
            f" {s.median([r.cpu_ms_per_message for r in s.runs]):.2f} |"
            f" {s.median([r.background_cores for r in s.runs]):.2f} |"
        )
    return "\n".join(rows)


def comparison(results: list[Result]) -> str:
    """Gateway against Postfix, client by client (medians when runs were repeated)."""
    lines = []
    groups = summaries(results)
    for postfix in (g for g in groups if g.target == "postfix"):
        for gateway in (g for g in groups if g.target != "postfix" and g.client == postfix.client):
            accept = gateway.accept_rate / postfix.accept_rate if postfix.accept_rate else 0.0
            deliver = gateway.deliver_rate / postfix.deliver_rate if postfix.deliver_rate else 0.0
            lines.append(
                f"{gateway.target} vs postfix ({postfix.client}): accepted"
                f" {gateway.accept_rate:.0f} vs {postfix.accept_rate:.0f} msg/s = {accept:.2f}x;"
                f" delivered {gateway.deliver_rate:.0f} vs {postfix.deliver_rate:.0f} msg/s"
                f" = {deliver:.2f}x"
            )
    return "\n".join(lines)


# --- entry points -------------------------------------------------------------------------------


def parse_workers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a worker count or list: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("worker counts must be at least 1")
    return values


def parse_clients(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in CLIENTS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"clients are {', '.join(CLIENTS)}; got {text!r}")
    return values


def parse_modes(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [v for v in values if v not in MODES]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=5120, help="body bytes per message")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=[2],
        help="gateway.workers; a comma list runs each (e.g. 1,2)",
    )
    parser.add_argument("--target", choices=("gateway", "postfix", "both"), default="both")
    parser.add_argument(
        "--clients",
        type=parse_clients,
        default=list(DEFAULT_CLIENTS),
        help="comma list of load clients: smtp-source,python,pipelined",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the whole plan this many times, interleaved; medians shown",
    )
    parser.add_argument("--pool-size", type=int, default=20, help="gateway relay pool_size")
    parser.add_argument("--concurrency", type=int, default=100, help="gateway delivery.concurrency")
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=120.0,
        help="seconds allowed to load, and again to deliver, per run",
    )
    sources = parser.add_mutually_exclusive_group()
    sources.add_argument(
        "--gateway-rev",
        default=None,
        metavar="REV",
        help="measure this git revision of the repository (exported with"
        " git archive) instead of the work tree",
    )
    sources.add_argument(
        "--gateway-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="measure the gateway package found in DIR (put on PYTHONPATH)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for the rest of"
        " the machine to go quiet (0: don't wait)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy record each gateway worker into DIR (perturbs the figures)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=list(DEFAULT_MODES),
        help="comma list: new-connection (a TCP connection per message, the default),"
        " reuse (SESSIONS connections reused), single-session (one session, one message"
        " at a time), pipeline (full default plugin pipeline on an HTML newsletter with"
        " 10 links, new connection per message; also runs the plain gateway)",
    )
    parser.add_argument(
        "--single-messages",
        type=int,
        default=2000,
        help="messages of the single-session mode",
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="same as adding 'pipeline' to --modes",
    )
    parser.add_argument(
        "--dkim",
        action="store_true",
        help="also print DKIM gateway_sign against raw OpenSSL RSA-2048 signatures per"
        " CPU-second (bench/pipeline_bench.py --dkim-only)",
    )
    return parser


def reproduce_command(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python",
        "bench/smtp_bench.py",
        "--size",
        str(args.size),
        "--sessions",
        str(args.sessions),
        "--messages",
        str(args.messages),
        "--workers",
        ",".join(map(str, args.workers)),
        "--target",
        args.target,
        "--clients",
        ",".join(args.clients),
        "--modes",
        ",".join(args.modes),
    ]
    if "single-session" in args.modes:
        parts += ["--single-messages", str(args.single_messages)]
    if args.repeat != 1:
        parts += ["--repeat", str(args.repeat)]
    if args.wait_idle != 30.0:
        parts += ["--wait-idle", f"{args.wait_idle:g}"]
    if args.pool_size != 20:
        parts += ["--pool-size", str(args.pool_size)]
    if args.concurrency != 100:
        parts += ["--concurrency", str(args.concurrency)]
    if args.gateway_rev is not None:
        parts += ["--gateway-rev", args.gateway_rev]
    elif args.gateway_src is not None:
        parts += ["--gateway-src", str(args.gateway_src)]
    if args.profile is not None:
        parts += ["--profile", str(args.profile)]
    if args.dkim:
        parts.append("--dkim")
    return f"cd {REPO} && {shlex.join(parts)}"


def describe_source(args: argparse.Namespace) -> str:
    """Which gateway code is measured."""
    if args.gateway_rev is not None:
        return f"git revision {args.gateway_rev} = {resolve_rev(args.gateway_rev)} of {REPO}"
    if args.gateway_src is not None:
        return f"{args.gateway_src} (via PYTHONPATH)"
    done = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    commit = done.stdout.strip() if done.returncode == 0 else "not a git checkout"
    return f"work tree {REPO} ({commit})"


def resolve_rev(rev: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"--gateway-rev: {done.stderr.strip()}")
    return done.stdout.strip()


def export_rev(rev: str, directory: Path) -> Path:
    """``git archive`` of ``rev`` unpacked into ``directory``, to run without the work tree."""
    directory.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", resolve_rev(rev)],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    # The editable install maps ``gateway_plugins`` to the work tree's plugins/; on
    # PYTHONPATH this name comes first, so the revision's own plugins are measured.
    (directory / "gateway_plugins").symlink_to("plugins")
    return directory


@dataclass(frozen=True)
class Step:
    """One run of the plan: which server, how configured, and the load."""

    target: str
    workers: int
    """``gateway.workers``; 0 for Postfix."""
    pipeline: bool
    """The gateway runs the full default plugin pipeline."""
    load: Load


def mode_clients(mode: str, clients: list[str]) -> list[str]:
    """The clients a mode runs with: the pipeline needs HTML, which smtp-source cannot send."""
    if mode != "pipeline":
        return clients
    return [c for c in clients if c != "smtp-source"] or ["pipelined"]


def plan(args: argparse.Namespace) -> Iterator[Step]:
    """Every run, in order; repeats are interleaved so that every configuration meets the
    same changes in machine load. The pipeline mode runs the plain gateway too, so the
    pipeline's own cost is the difference of two runs with the same client and content."""
    for _ in range(args.repeat):
        for mode in args.modes:
            sessions, messages = args.sessions, args.messages
            if mode == "single-session":
                sessions, messages = 1, args.single_messages
            servers: list[tuple[str, int, bool]] = []
            if args.target != "postfix":
                for workers in args.workers:
                    servers.append(("gateway", workers, False))
                    if mode == "pipeline":
                        servers.append(("gateway", workers, True))
            if args.target != "gateway":
                servers.append(("postfix", 0, False))
            for target, workers, pipeline in servers:
                for client in mode_clients(mode, args.clients):
                    load = Load(client, mode, sessions, messages, args.size, args.phase_timeout)
                    yield Step(target, workers, pipeline, load)


def bench(args: argparse.Namespace) -> int:
    if args.pipeline and "pipeline" not in args.modes:
        args.modes = [*args.modes, "pipeline"]
    ensure_postfix()
    become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    results: list[Result] = []
    print(f"# {reproduce_command(args)}")
    print(f"# gateway sources: {describe_source(args)}")
    print(f"# {machine_summary()}")
    print(
        f"# modes {', '.join(args.modes)}; {args.messages} messages of {args.size} body bytes"
        f" over {args.sessions} sessions per run ({args.single_messages} over one session in"
        f" single-session); work directory {workdir}",
        flush=True,
    )
    try:
        if args.gateway_rev is not None:
            args.gateway_src = export_rev(args.gateway_rev, workdir / "gateway-src")
        sink = Sink(workdir)
        try:
            for number, step in enumerate(plan(args), start=1):
                name = f"{step.target}{step.workers or ''}{'p' if step.pipeline else ''}"
                rundir = workdir / f"{number}-{name}-{step.load.client}-{step.load.mode}"
                rundir.mkdir()
                server: Server = (
                    GatewayServer(
                        rundir,
                        sink.port,
                        workers=step.workers,
                        pool_size=args.pool_size,
                        concurrency=args.concurrency,
                        source=args.gateway_src,
                        pipeline=step.pipeline,
                    )
                    if step.target == "gateway"
                    else PostfixServer(rundir, sink.port)
                )
                result = measure(server, sink, step.load, args, rundir.name)
                results.append(result)
                print(describe(result, step.load.messages), flush=True)
        finally:
            sink.stop()
        dkim = dkim_rates(args) if args.dkim else ""
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(results))
    if args.repeat > 1:
        print()
        print(summary_table(results))
    if args.target == "both":
        print()
        print(comparison(results))
    cost = pipeline_cost(results)
    if cost:
        print()
        print(cost)
    if dkim:
        print()
        print(dkim)
    print(f"\nreproduce: {reproduce_command(args)}")
    return 0 if all(r.complete for r in results) else 1


def pipeline_cost(results: list[Result]) -> str:
    """CPU per message of the gateway with the full pipeline less the plain gateway's, on the
    same client and content (medians when runs were repeated)."""
    groups = {(s.target, s.client): s for s in summaries(results)}
    lines = []
    for (target, client), full in groups.items():
        if not target.endswith(" +pipeline"):
            continue
        plain = groups.get((target.removesuffix(" +pipeline"), client))
        if plain is None:
            continue
        full_ms = full.median([r.cpu_ms_per_message for r in full.runs])
        plain_ms = plain.median([r.cpu_ms_per_message for r in plain.runs])
        lines.append(
            f"pipeline cost ({target}, {client}): {full_ms:.2f} - {plain_ms:.2f}"
            f" = {full_ms - plain_ms:.2f} CPU ms/msg over the plain relay"
        )
    return "\n".join(lines)


def dkim_rates(args: argparse.Namespace) -> str:
    """``bench/pipeline_bench.py --dkim-only``: gateway_sign against raw OpenSSL RSA-2048
    signatures per CPU-second, interleaved, with the gateway sources under test."""
    env = dict(os.environ)
    if args.gateway_src is not None:
        env["PYTHONPATH"] = str(args.gateway_src)
    script = (args.gateway_src or REPO) / "bench" / "pipeline_bench.py"
    if not script.exists():
        script = REPO / "bench" / "pipeline_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dkim-only", "--seconds", "1", "--rounds", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return (done.stdout + done.stderr).strip()


def machine_summary() -> str:
    """CPU count and model, Python, Postfix and aiosmtpd/aiosmtplib versions."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postfix = subprocess.run(
        [str(SBIN / "postconf"), "-dh", "mail_version"], capture_output=True, text=True
    ).stdout.strip()
    from importlib.metadata import PackageNotFoundError, version

    libraries = []
    for name in ("aiosmtpd", "aiosmtplib"):
        try:
            libraries.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            libraries.append(f"{name} missing")
    return (
        f"{os.cpu_count()} x {model}; Python {sys.version.split()[0]}; Postfix {postfix};"
        f" {', '.join(libraries)}"
    )


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smtp_bench.py client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--html", action="store_true")
    parser.add_argument("--pipelined", action="store_true")
    parser.add_argument("--reconnect", action="store_true")
    args = parser.parse_args(argv)
    client = pipelined_client if args.pipelined else python_client
    run = asyncio.run(
        client(
            args.port,
            args.size,
            args.sessions,
            args.messages,
            args.timeout,
            args.html,
            args.reconnect,
        )
    )
    print(json.dumps(run.__dict__))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    return bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
