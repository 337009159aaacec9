"""Where the Redis store connects: the URL forms it accepts, and the persistence check.

``redis://`` and ``rediss://`` (TLS) name one server, ``unix://`` a socket; the ``+sentinel``
and ``+cluster`` forms name several nodes, because with those the gateway must find the
current master (Sentinel) or the node owning a key (Cluster) itself::

    redis://[[user]:password@]host[:6379][/db]
    rediss://[[user]:password@]host[:6379][/db]          TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=0]
    redis+sentinel://[[user]:password@]host:26379[,host:26379...]/service[/db]
    rediss+sentinel://...                                 TLS to the sentinels and the master
    redis+cluster://[[user]:password@]host:6379[,host:6379...]
    rediss+cluster://...                                  TLS

The password given in a Sentinel URL is the master's; sentinels that need their own are
reached with ``sentinel_password`` in the query (``?sentinel_password=...``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

log = logging.getLogger("gateway.store.redis")

Topology = Literal["single", "sentinel", "cluster"]


class RedisTarget(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed ``store.url``."""

    url: str
    topology: Topology
    tls: bool
    nodes: tuple[tuple[str, int], ...] = ()
    """Sentinels or cluster seed nodes (empty for a single server)."""
    service: str = ""
    """Sentinel: the monitored master's name."""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @property
    def redacted(self) -> str:
        """The URL with any password replaced, for logs and ``check-config``."""
        if self.password is None:
            return self.url
        parts = urlsplit(self.url)
        user = unquote(parts.username or "")
        host = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=f"{user}:***@{host}").geturl()


_SINGLE = {"redis", "rediss", "unix"}
_MULTI = {"redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"}


def parse_redis_url(url: str) -> RedisTarget:
    """Check ``url`` and say what it names; raises ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SINGLE | _MULTI:
        raise ValueError(
            f"unsupported scheme {parts.scheme + '://' if parts.scheme else 'in ' + repr(url)}: "
            "use redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
            "redis+cluster:// or rediss+cluster://"
        )
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    tls = scheme.startswith("rediss")
    if scheme in _SINGLE:
        if scheme != "unix" and not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        if scheme == "unix" and not parts.path:
            raise ValueError(f"no socket path in {url!r}")
        db = _db(parts.path.strip("/") if scheme != "unix" else "", url)
        if scheme == "unix":
            db = _db(parse_qs(parts.query).get("db", ["0"])[0], url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        return RedisTarget(
            url=url, topology="single", tls=tls, db=db, username=username, password=password
        )
    hosts = parts.netloc.rpartition("@")[2]
    nodes = tuple(_node(h, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"no hosts in {url!r}")
    query = parse_qs(parts.query)
    path = [p for p in parts.path.split("/") if p]
    if scheme.endswith("+cluster"):
        if path:
            raise ValueError(f"a cluster has only database 0; remove {parts.path!r} from {url!r}")
        return RedisTarget(
            url=url,
            topology="cluster",
            tls=tls,
            nodes=nodes,
            username=username,
            password=password,
        )
    if not path or len(path) > 2:
        raise ValueError(f"name the master: {scheme}://host:26379/<service>[/<db>], got {url!r}")
    return RedisTarget(
        url=url,
        topology="sentinel",
        tls=tls,
        nodes=nodes,
        service=unquote(path[0]),
        db=_db(path[1] if len(path) == 2 else "", url),
        username=username,
        password=password,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def _db(text: str, url: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"database must be a number, got {text!r} in {url!r}")
    return int(text)


def _node(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"each host needs a port (host:port), got {text!r} in {url!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r} in {url!r}")
    return host.strip("[]"), int(port)


def connect(target: RedisTarget) -> Any:
    """A redis-py asyncio client for ``target`` (not yet connected: it connects on first use)."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.sentinel import Sentinel

    common: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.topology == "single":
        return aioredis.Redis.from_url(target.url, decode_responses=False)
    if target.topology == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=target.tls,
            **common,
        )
    sentinel = Sentinel(
        list(target.nodes),
        sentinel_kwargs={"password": target.sentinel_password, "ssl": target.tls},
        ssl=target.tls,
        db=target.db,
        **common,
    )
    return sentinel.master_for(target.service, redis_class=_sentinel_master_class())


def _sentinel_master_class() -> type[Any]:
    import redis.asyncio as aioredis

    class SentinelMaster(aioredis.Redis):
        """The master's client. Closing it also closes the clients of the sentinels it asks
        for the master, which redis-py's ``master_for`` leaves open (and so leaks)."""

        async def aclose(self, close_connection_pool: bool | None = None) -> None:
            try:
                await super().aclose(close_connection_pool)
            finally:
                manager = getattr(self.connection_pool, "sentinel_manager", None)
                for sentinel in manager.sentinels if manager is not None else ():
                    await sentinel.aclose()

    return SentinelMaster


# --- persistence --------------------------------------------------------------------------------


class Persistence(msgspec.Struct, frozen=True):
    """The server's AOF settings, as far as it tells them."""

    appendonly: bool | None
    appendfsync: str | None
    """``always``, ``everysec`` or ``no``; ``None`` when CONFIG is not allowed (managed Redis)."""

    def risk(self) -> str | None:
        """What a crash can lose with these settings, or ``None`` when nothing acknowledged is."""
        if self.appendonly is False:
            return (
                "Redis persistence: appendonly is off, so the server keeps the queue in memory"
                " only: a Redis restart or crash loses every message accepted since the last RDB"
                " snapshot (all of them without one). Set appendonly yes and appendfsync always"
                " (docs/redis.md)."
            )
        if self.appendonly is None:
            return (
                "Redis persistence: the server does not allow CONFIG GET, so its AOF setting is"
                " unknown; accepted mail is only as safe as that setting (docs/redis.md)."
            )
        if self.appendfsync == "always":
            return None
        if self.appendfsync == "everysec":
            return (
                "Redis persistence: appendfsync everysec: a crash of the Redis host (power, kernel)"
                " loses the last ~1 s (up to 2 s) of accepted messages and delivery results;"
                " a crash of the redis-server process alone loses nothing. Set appendfsync"
                " always for no loss (docs/redis.md)."
            )
        return (
            f"Redis persistence: appendfsync {self.appendfsync}: the OS flushes the AOF when it"
            " likes (typically every 30 s), so a crash of the Redis host loses that much"
            " accepted mail. Set appendfsync always (docs/redis.md)."
        )


_FSYNC_RANK = {"always": 3, "everysec": 2}
"""How safe each ``appendfsync`` is; anything else (``no``, unknown) ranks 0."""


def _weakest(found: list[Persistence]) -> Persistence:
    def rank(p: Persistence) -> tuple[int, int]:
        on = {False: 0, None: 1, True: 2}[p.appendonly]
        return on, _FSYNC_RANK.get(p.appendfsync or "", 0)

    return min(found, key=rank)


async def read_persistence(client: Any) -> Persistence:
    """The server's AOF settings. A cluster client asks every node, masters and replicas —
    the gateway's slot may move to any of them in a failover or resharding — and reports the
    weakest (redis-py would otherwise send CONFIG GET to one arbitrary node)."""
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import ResponseError

    cluster = isinstance(client, RedisCluster)
    try:
        if cluster:
            settings = await client.config_get("append*", target_nodes=RedisCluster.ALL_NODES)
        else:
            settings = await client.config_get("append*")
    except ResponseError:  # CONFIG renamed or disabled, as managed services do
        try:
            info = await client.info("persistence")
        except ResponseError:
            return Persistence(None, None)
        if cluster and isinstance(info, dict) and all(isinstance(v, dict) for v in info.values()):
            return _weakest([Persistence(bool(i.get("aof_enabled")), None) for i in info.values()])
        return Persistence(bool(info.get("aof_enabled")), None)
    if (
        isinstance(settings, dict)
        and settings
        and all(isinstance(v, dict) for v in settings.values())
    ):  # a cluster client answers per node
        return _weakest([_persistence(s) for s in settings.values()])
    return _persistence(settings)


def _persistence(settings: dict[Any, Any]) -> Persistence:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    found = {text(k): text(v) for k, v in settings.items()}
    return Persistence(found.get("appendonly") == "yes", found.get("appendfsync"))


def describe_persistence(persistence: Persistence, *, allow_volatile: bool) -> tuple[bool, str]:
    """``/readyz``'s persistence check: the mode in words, and whether acknowledged mail is
    kept as promised (``appendonly no`` passes only when ``store.allow_volatile`` says so)."""
    if persistence.appendonly is False:
        if allow_volatile:
            return True, (
                "Redis appendonly no (store.allow_volatile = true): a Redis restart loses"
                " every message in the queue"
            )
        return False, "Redis appendonly no: a Redis restart would lose acknowledged mail"
    if persistence.appendonly is None:
        return True, "Redis persistence unknown (CONFIG not allowed); see docs/redis.md"
    fsync = persistence.appendfsync or "unknown"
    if fsync == "always":
        return True, "Redis appendonly yes, appendfsync always: nothing acknowledged is lost"
    if fsync == "everysec":
        return True, (
            "Redis appendonly yes, appendfsync everysec: a crash of the Redis host can lose"
            " the last ~1-2 s of accepted mail"
        )
    return True, (
        f"Redis appendonly yes, appendfsync {fsync}: a crash of the Redis host can lose"
        " what the OS had not yet flushed (~30 s)"
    )


async def check_persistence(client: Any) -> Persistence:
    """Read the server's AOF settings and log a warning saying what a crash could lose."""
    persistence = await read_persistence(client)
    risk = persistence.risk()
    if risk is None:
        log.info("Redis persistence: appendonly yes, appendfsync always (no acknowledged loss)")
    else:
        log.warning(risk)
    return persistence
