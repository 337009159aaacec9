"""Running the gateway: one ``Gateway`` per worker process, and the supervisor that forks them.

A ``Gateway`` wires config → store → providers → dispatcher → ingress → SMTP listeners (and
the HTTP API when ``[http]`` is on), in one event loop. With ``gateway.workers = N`` the
supervisor forks N workers; each binds the same ports with SO_REUSEPORT (the kernel spreads
connections), writes to its own spool shard and delivers from the shards ``i, i+N, i+2N, …``,
so shards left by a larger worker count are still drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from gateway import durable
from gateway.clock import Clock, SystemClock
from gateway.config import Config, ListenerSection, SmtpSection
from gateway.dispatch import Dispatcher
from gateway.durations import parse_duration
from gateway.ingress import Ingress, Submission
from gateway.message import Reject
from gateway.ops.metrics import GatewayMetrics
from gateway.ops.sender_webhooks import WebhookSender
from gateway.ops.sessions import SessionTracker
from gateway.plugin_manager import call_all, call_first, configure_plugins, make_plugin_manager
from gateway.providers import Provider, build_provider
from gateway.retention import purge_forever
from gateway.routing import Router, status_dir
from gateway.smtp import (
    SubmissionHandler,
    TenantDirectory,
    make_protocol_factory,
    server_tls_context,
)
from gateway.store.base import Store
from gateway.store.sqlite import SqliteStore, existing_shards, prepare_spool
from gateway.streams import stream_section
from gateway.submission.auth_throttle import AuthThrottle, PasswordChecker
from gateway.submission.connection_limits import ConnectionLimits, LimitLog
from gateway.submission.sender_policy import SenderPolicy
from gateway.submission.session_limits import SessionRules
from gateway.supervisor import Supervisor
from gateway.templates.limits import RenderLimits
from gateway.templates.pool import RenderPool
from gateway.verp import VerpSigner

if TYPE_CHECKING:
    from litestar import Litestar

    from gateway.api.serving import HttpServer

log = logging.getLogger("gateway")


def open_store(
    config: Config, *, worker: int = 0, workers: int = 1, clock: Clock | None = None
) -> Store:
    """The store for worker ``worker`` of ``workers``. SQLite: it writes its own shard and
    drains its share. Redis: every worker and node shares the one queue."""
    if config.store.backend == "redis":
        return redis_store(config, clock)
    directory = config.spool_dir
    present = existing_shards(directory) if directory.is_dir() else []
    mine = sorted({worker} | {s for s in present if s % workers == worker})
    return SqliteStore(directory, write_shard=worker, shards=mine)


def redis_store(config: Config, clock: Clock | None = None) -> Store:
    from gateway.store.redis import RedisStore  # loads redis-py only when configured

    section = config.store
    return RedisStore(
        section.url,
        prefix=section.prefix,
        lease_seconds=section.lease_seconds,
        clock=clock,
        min_replicas=section.min_replicas,
        replica_timeout=section.replica_timeout_seconds,
        allow_volatile=section.allow_volatile,
    )


def operator_store(config: Config) -> Store:
    """The store as ``gateway queue`` sees it: every shard (SQLite), or the shared queue."""
    if config.store.backend == "redis":
        return redis_store(config)
    return SqliteStore(config.spool_dir, all_shards=True)


class Gateway:
    """Everything one worker runs. ``start()`` binds and begins delivering; ``stop()`` drains."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        worker: int = 0,
        workers: int = 1,
        plugin_manager: pluggy.PluginManager | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.worker = worker
        self.pm = plugin_manager or make_plugin_manager(
            extra=config.gateway.plugins, tables=config.plugins
        )
        self.plugin_state: dict[str, Any] = {}
        """Per-gateway state of plugins, keyed by plugin name (set in ``gateway_configure``)."""
        # Operations (gateway/ops): metrics and sender webhooks observe events like any plugin.
        self.metrics = GatewayMetrics(self)
        self.webhooks = WebhookSender(self)
        self.sessions = SessionTracker()
        self.sessions.on_change = self.metrics.session_changed
        self.sessions.on_refusal = self.metrics.smtp_refused_reply
        self.pm.register(self.metrics, name="ops_metrics")
        self.pm.register(self.webhooks, name="sender_webhooks")
        configure_plugins(self.pm, self, config)
        self.store: Store = store or open_store(
            config, worker=worker, workers=workers, clock=self.clock
        )
        self.reuse_port = workers > 1
        self.providers: dict[str, Provider] = {
            name: build_provider(name, section, config)
            for name, section in config.providers.items()
        }
        self.router = Router(
            config,
            self.providers,
            store=self.store,
            clock=self.clock,
            status_file=status_dir(config) / f"worker-{worker}.json",
        )
        """Routes, circuit breakers and limits: ``breaker_states()``, ``provider_stats()``."""
        self.dispatcher = Dispatcher(
            store=self.store,
            router=self.router,
            settings=config.delivery,
            clock=self.clock,
            hostname=config.gateway.hostname,
            plugins=self.pm,
            gateway=self,
        )
        self.ingress = Ingress(
            store=self.store,
            clock=self.clock,
            hostname=config.gateway.hostname,
            lifetime=config.delivery.max_lifetime_seconds,
            on_enqueued=self.dispatcher.wake,
            policy=self._accept_policy,
            senders=SenderPolicy(config.tenants),
            streams=functools.partial(stream_section, config),
        )
        self.ingress.deliverer = self.dispatcher
        self.ingress.observers.append(self.metrics.message_accepted)
        auth = config.smtp.auth
        self.passwords = PasswordChecker(auth.password_workers, auth.password_queue)
        self.auth_throttle = AuthThrottle(auth, self.clock)
        self.directory = TenantDirectory(config.tenants, self.passwords)
        self._limit_log = LimitLog(self.clock, logging.getLogger("gateway.smtp"))
        templates = config.templates
        self.renderers = RenderPool(
            RenderLimits(
                cpu_time=templates.cpu_seconds,
                memory=templates.memory,
                output_size=templates.output_size,
            ),
            templates.workers,
        )
        """Untrusted-template render processes, started when first needed: batch sends and
        plugins' stored templates (campaigns) share them, so ``[templates] workers`` bounds all."""
        self.handlers: list[SubmissionHandler] = []
        self.servers: dict[str, asyncio.Server] = {}
        self.http: HttpServer | None = None
        self.api_app: Litestar | None = None
        self.bounce_server: asyncio.Server | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._webhook_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None

    async def _accept_policy(self, submission: Submission) -> Reject | None:
        verdict: Reject | None = await call_first(
            self.pm, "gateway_accept_message", gateway=self, submission=submission
        )
        return verdict

    def _limit_hit(self, listener: str, limit: str, client: str) -> None:
        """A session limit refused or ended a session: counted, and logged with the client."""
        self.metrics.smtp_limit_hit(listener, limit)
        self._limit_log.hit(listener, limit, client)

    def _is_trusted(self, address: str) -> bool:
        return self.directory.tenant_for_address(address) is not None

    @property
    def smtp_ports(self) -> dict[str, int]:
        """Bound port per listener name (useful when the config asked for port 0)."""
        return {name: server.sockets[0].getsockname()[1] for name, server in self.servers.items()}

    @property
    def http_port(self) -> int | None:
        """The HTTP API's bound port, or ``None`` when ``[http]`` is off."""
        return self.http.port if self.http is not None else None

    async def start(self, *, deliver: bool = True) -> None:
        await self.store.open()
        recovered = await self.store.recover(self.clock.now())
        if recovered:
            log.info("returned %d interrupted deliveries to the queue", recovered)
        for provider in self.providers.values():
            await provider.start()
        await self.router.start()
        await call_all(self.pm, "gateway_startup", gateway=self)
        await self._listen()
        await self._listen_for_bounces()
        if self.config.http.enabled:
            await self._serve_http()
        if deliver:
            self._dispatch_task = asyncio.create_task(self.dispatcher.run(), name="dispatcher")
            self._webhook_task = asyncio.create_task(self.webhooks.run(), name="sender-webhooks")
            retention = self.config.store.retention_seconds
            if retention is not None:
                self._retention_task = asyncio.create_task(
                    purge_forever(self.store, self.clock, retention), name="retention"
                )

    async def _listen(self) -> None:
        smtp = self.config.smtp
        tls_context = None
        if smtp.tls.cert_file:
            tls_context = server_tls_context(smtp.tls.cert_file, smtp.tls.key_file)
        loop = asyncio.get_running_loop()
        for listener in smtp.listeners:
            handler = SubmissionHandler(
                ingress=self.ingress, directory=self.directory, listener=listener, limits=smtp
            )
            self.handlers.append(handler)
            factory = make_protocol_factory(
                handler,
                hostname=self.config.gateway.hostname,
                listener=listener,
                limits=smtp,
                tls_context=tls_context,
                rules=SessionRules(listener, smtp, self._limit_hit),
                throttle=self.auth_throttle,
            )
            admission = ConnectionLimits(
                listener, clock=self.clock, exempt=self._is_trusted, on_limit=self._limit_hit
            )
            implicit = listener.tls == "implicit"
            sock = bind_socket(listener.address, listener.port, reuse_port=self.reuse_port)
            self.servers[listener.name] = await loop.create_server(
                admission.wrap(self.sessions.wrap(factory, listener.name)),
                sock=sock,
                ssl=tls_context if implicit else None,
                ssl_handshake_timeout=listener.tls_handshake_timeout if implicit else None,
            )
            log.info(
                "smtp listener %s on %s:%d (tls=%s)",
                listener.name,
                listener.address,
                self.smtp_ports[listener.name],
                listener.tls,
            )

    async def _listen_for_bounces(self) -> None:
        """The bounce domain's inbound SMTP listener (``gateway/bounces.py``), when on."""
        settings = self.config.bounces
        signer = VerpSigner.from_config(self.config)
        if signer is None or not settings.listen:
            return
        from gateway.bounces import BounceHandler, make_bounce_protocol_factory

        # Port 25 on the internet: the same connection and session limits as a listener.
        listener = ListenerSection(
            name="bounces", port=settings.port, address=settings.address, tls="none"
        )
        session = SmtpSection(timeout=settings.timeout, max_message_size=settings.max_message_size)
        factory = make_bounce_protocol_factory(
            BounceHandler(self, signer, settings),
            hostname=self.config.gateway.hostname,
            settings=settings,
            rules=SessionRules(listener, session, self._limit_hit),
            throttle=self.auth_throttle,
        )
        admission = ConnectionLimits(
            listener, clock=self.clock, exempt=self._is_trusted, on_limit=self._limit_hit
        )
        sock = bind_socket(settings.address, settings.port, reuse_port=self.reuse_port)
        self.bounce_server = await asyncio.get_running_loop().create_server(
            admission.wrap(factory), sock=sock
        )
        log.info(
            "bounce listener for %s on %s:%d", signer.domain, settings.address, self.bounce_port
        )

    @property
    def bounce_port(self) -> int | None:
        """The bounce listener's bound port, or ``None`` when it is off."""
        if self.bounce_server is None:
            return None
        port: int = self.bounce_server.sockets[0].getsockname()[1]
        return port

    async def _serve_http(self) -> None:
        # Imported here: litestar and uvicorn load only when the API is switched on.
        from gateway.api.app import create_app
        from gateway.api.serving import HttpServer

        http = self.config.http
        sock = bind_socket(http.address, http.port, reuse_port=self.reuse_port)
        try:
            self.api_app = create_app(self)
            self.http = HttpServer(self.api_app, sock)
            await self.http.start()
        except BaseException:
            sock.close()
            self.http = None
            raise
        log.info("http api on %s:%d", http.address, self.http.port)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; let SMTP sessions finish their transaction and deliveries and
        webhook requests in progress finish, each for up to ``grace`` seconds; close.

        Open sessions get ``421`` at their next ``MAIL`` (a transaction under way completes
        first); what is still open after ``grace`` is aborted — unacknowledged, so the client
        keeps it. Deliveries still sending after ``grace`` are cancelled and returned to the
        queue (nothing acknowledged is lost; at most a send is repeated).
        """
        for server in self.servers.values():
            server.close()
        if self.http is not None:
            await self.http.stop()
        servers = [*self.servers.values(), *([self.bounce_server] if self.bounce_server else [])]
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), grace)
        await self.sessions.drain(grace)
        await self.dispatcher.stop(grace)
        if self._dispatch_task is not None:
            self._dispatch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatch_task
        await self.webhooks.stop(grace)
        for task in (self._webhook_task, self._retention_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if isinstance(self.store, SqliteStore):
            # This worker's shards are its own: hand deliveries cut off back to the queue now
            # (the Redis store releases its leases when it closes).
            with contextlib.suppress(Exception):
                returned = await self.store.recover(self.clock.now())
                if returned:
                    log.info("returned %d deliveries in flight to the queue", returned)
        await self.router.stop()
        self.passwords.close()
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.close()
        try:
            await call_all(self.pm, "gateway_shutdown", gateway=self)
        except Exception:
            log.exception("a plugin failed during shutdown")
        await self.renderers.close()
        await self.store.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop every worker runs on: uvloop (libuv) — it cut a relayed message's CPU by a
    quarter in ``bench/smtp_bench.py`` — and the stdlib loop where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_in_event_loop(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main)


def bind_socket(address: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# --- process model ----------------------------------------------------------------------------


async def _serve_worker(
    config: Config, worker: int, workers: int, config_file: str | None = None
) -> None:
    gateway = Gateway(config, worker=worker, workers=workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        from gateway.ops.reload import reload_from

        log.info("worker %d: SIGHUP, reloading %s", worker, config_file or "built-in defaults")
        task = loop.create_task(reload_from(gateway, config_file))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked across the fork
    await gateway.start()
    ports = ", ".join(f"{n}={p}" for n, p in gateway.smtp_ports.items())
    if gateway.http_port is not None:
        ports += f"; http {gateway.http_port}"
    log.info("worker %d/%d ready (smtp %s)", worker + 1, workers, ports)
    await stop.wait()
    grace = parse_duration(gateway.config.gateway.shutdown_grace)
    log.info("worker %d stopping (grace %gs)", worker, grace)
    await gateway.stop(grace)
    log.info("worker %d stopped", worker)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def prepare_data_dir(config: Config) -> None:
    """Create ``data_dir`` and the files every worker shares, once, before any worker starts:
    durably (a power cut cannot take back a directory the spool lives in), and in one process,
    so workers starting together never race to create ``tenants.db`` or a shard."""
    durable.make_directories(Path(config.data_dir))
    if config.store.backend == "sqlite":
        prepare_spool(config.spool_dir, range(config.gateway.workers))


def serve(config: Config, config_file: str | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT: in this process, or as the supervisor of workers
    (``gateway.supervisor``: forwards SIGHUP, SIGTERM and SIGINT, replaces a worker that dies,
    exits with the workers' status, 0 after a clean SIGTERM). SIGHUP re-reads ``config_file``
    (see ``gateway.ops.reload``)."""
    prepare_data_dir(config)
    # Until a worker's loop installs its handlers, a SIGHUP must not kill it (its default).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers = config.gateway.workers
    if workers == 1:
        run_in_event_loop(_serve_worker(config, 0, 1, config_file))
        return 0

    def run_worker(index: int) -> int:
        run_in_event_loop(_serve_worker(config, index, workers, config_file))
        return 0

    return Supervisor(workers, run_worker, Path(config.data_dir)).run()
