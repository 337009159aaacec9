"""A real authoritative DNS server (Debian's NSD) on loopback, for tests.

``start_dns_server({"example.test": ['@ TXT "v=spf1 -all"']}, workdir)`` writes one zone file
per zone (SOA and NS are added when the records lack them), starts ``nsd -d`` unprivileged on a
free 127.0.0.1 port (UDP and TCP), and returns once the server answers. Records are zone-file
lines relative to the zone origin; ``txt(value)`` quotes and splits long TXT values (DKIM keys)
into 255-byte strings. ``server.update(zone, records)`` rewrites a zone and reloads it (SIGHUP).

Failure modes for "could not check" tests:
- zones named in ``servfail=`` are configured without a zone file; NSD answers them SERVFAIL;
- ``BlackHole()`` binds a UDP socket and a TCP listener that never answer, so a resolver
  pointed at it times out.

The ``dns_server`` fixture in tests/conftest.py starts servers and stops each by its process.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

HOST = "127.0.0.1"
START_TIMEOUT = 20.0

Records = str | Sequence[str]


def txt(value: str) -> str:
    """Quote a TXT value as zone-file character strings of at most 255 bytes each."""
    data = value.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    quoted = []
    for chunk in chunks:
        text = chunk.decode().replace("\\", "\\\\").replace('"', '\\"')
        quoted.append(f'"{text}"')
    return "( " + " ".join(quoted) + " )" if len(quoted) > 1 else quoted[0]


def free_port() -> int:
    """A port free for both UDP and TCP on loopback right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for UDP and TCP")


def zone_text(zone: str, records: Records, serial: int) -> str:
    """A complete zone file: origin, TTL, SOA and NS unless ``records`` bring their own."""
    lines = records.splitlines() if isinstance(records, str) else list(records)
    types = {token.upper() for line in lines for token in line.split()[:4]}
    head = [f"$ORIGIN {zone.rstrip('.')}.", "$TTL 60"]
    if "SOA" not in types:
        head.append(f"@ IN SOA ns1 hostmaster {serial} 3600 600 86400 60")
    if "NS" not in types:
        head.append("@ IN NS ns1")
        head.append(f"ns1 IN A {HOST}")
    return "\n".join([*head, *lines]) + "\n"


def write_zone(workdir: Path, zone: str, records: Records, serial: int) -> None:
    (workdir / "zones" / f"{zone}.zone").write_text(zone_text(zone, records, serial))


class DnsServer:
    """One running NSD process serving the given zones on ``HOST:port``."""

    def __init__(
        self, workdir: Path, port: int, process: subprocess.Popen[bytes], zones: Iterable[str]
    ) -> None:
        self.workdir = workdir
        self.host = HOST
        self.port = port
        self.process = process
        self._serials = dict.fromkeys(zones, 1)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        path = self.workdir / "nsd.log"
        return path.read_text() if path.exists() else ""

    def resolver(self, timeout: float = 5.0) -> dns.resolver.Resolver:
        """A stub resolver (sync) that asks only this server."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = timeout
        resolver.timeout = timeout
        return resolver

    def query(
        self, name: str, rdtype: str = "SOA", *, tcp: bool = False, timeout: float = 2.0
    ) -> dns.message.Message:
        """One direct query to this server (no retries), for readiness checks and tests."""
        request = dns.message.make_query(name, rdtype)
        if tcp:
            return dns.query.tcp(request, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(request, self.host, port=self.port, timeout=timeout)

    def update(self, zone: str, records: Records) -> None:
        """Replace a served zone's records and wait until the server answers with them."""
        zone = zone.rstrip(".").lower()
        if zone not in self._serials:
            raise KeyError(f"zone {zone} is not served; start the server with it")
        serial = self._serials[zone] + 1
        write_zone(self.workdir, zone, records, serial)
        self._serials[zone] = serial
        old_servers = self._server_children()
        self.process.send_signal(signal.SIGHUP)
        self._wait_for_serial(zone, serial)
        # The serving child that had the old data may answer for a moment after the new one
        # started: wait until it is gone.
        deadline = time.monotonic() + START_TIMEOUT
        while old_servers & self._server_children():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nsd kept its old server processes:\n{self.log}")
            time.sleep(0.02)

    def _server_children(self) -> set[int]:
        """PIDs of this NSD's live query-serving processes (named "nsd: server N")."""
        parents: dict[int, int] = {}
        servers = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            state, ppid = stat.rpartition(")")[2].split()[:2]
            parents[int(entry.name)] = int(ppid)
            if name.startswith("nsd: server") and state != "Z":
                servers.add(int(entry.name))

        def descends(pid: int) -> bool:
            for _ in range(8):
                pid = parents.get(pid, 0)
                if pid == self.pid:
                    return True
            return False

        return {pid for pid in servers if descends(pid)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def _wait_for_serial(self, zone: str, serial: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"nsd exited ({self.process.returncode}):\n{self.log}")
            try:
                answer = self.query(zone, "SOA", timeout=0.2)
                rrset = answer.get_rrset(
                    answer.answer, dns.name.from_text(zone), 1, dns.rdatatype.SOA
                )
                if rrset is not None and rrset[0].serial == serial:
                    return
            except (OSError, dns.exception.DNSException):
                # Not up yet, or a stray datagram from whoever held this port before: ask again.
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nsd did not serve {zone} serial {serial}:\n{self.log}")
            time.sleep(0.02)

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_CONFIG = """\
server:
  ip-address: {host}@{port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{dir}/zones"
  database: ""
  zonelistfile: "{dir}/zone.list"
  xfrdfile: "{dir}/xfrd.state"
  xfrdir: "{dir}"
  pidfile: "{dir}/nsd.pid"
  logfile: "{dir}/nsd.log"
  verbosity: 1
  hide-version: yes
  reuseport: no
  tcp-count: 32
remote-control:
  control-enable: no
"""

_ZONE = """\
zone:
  name: {zone}
  zonefile: {zone}.zone
"""


def start_dns_server(
    zones: Mapping[str, Records], workdir: Path, *, servfail: Iterable[str] = ()
) -> DnsServer:
    """Start NSD serving ``zones`` (and SERVFAIL for ``servfail``); return when it answers."""
    nsd = shutil.which("nsd") or shutil.which("nsd", path="/usr/sbin")
    if nsd is None:
        raise RuntimeError("nsd is not installed: run scripts/test.sh (it installs Debian's nsd)")
    failing = [zone.rstrip(".").lower() for zone in servfail]
    if not zones:
        raise ValueError("give at least one zone to serve")
    for attempt in itertools.count():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "zones").mkdir(exist_ok=True)
        port = free_port()
        config = _CONFIG.format(host=HOST, port=port, dir=workdir)
        for zone in [*(z.rstrip(".").lower() for z in zones), *failing]:
            config += _ZONE.format(zone=zone)
        (workdir / "nsd.conf").write_text(config)
        (workdir / "nsd.log").unlink(missing_ok=True)
        served = {zone.rstrip(".").lower(): records for zone, records in zones.items()}
        for zone, records in served.items():
            write_zone(workdir, zone, records, 1)
        process = subprocess.Popen(
            [nsd, "-d", "-c", str(workdir / "nsd.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = DnsServer(workdir, port, process, served)
        try:
            server._wait_for_serial(next(iter(served)), 1)
            return server
        except RuntimeError:
            server.stop()
            # Another process may have taken the port between probing and binding: retry.
            if attempt >= 2 or "bind" not in server.log:
                raise
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


class BlackHole:
    """A loopback UDP socket and TCP listener that never answer: resolvers time out on it."""

    def __init__(self) -> None:
        self.host = HOST
        self.port = free_port()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((HOST, self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.bind((HOST, self.port))
        self._tcp.listen(16)

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
