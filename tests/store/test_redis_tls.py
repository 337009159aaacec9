"""``rediss://``: the Redis store over TLS against a real redis-server with a TLS port, its
certificate issued at test time by a throw-away CA (tests/conftest.py ``certificates``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gateway.message import DeliveryStatus
from gateway.store.base import DeliveryUpdate, StoreError
from gateway.store.redis import RedisStore
from tests.conftest import Certificates
from tests.redisserver import RedisServer, free_port
from tests.store.conftest import HOUR, T0, message


class TlsRedis:
    """A redis-server with a plain port (for the harness) and a TLS port (for the test)."""

    def __init__(self, directory: Path, certificates: Certificates) -> None:
        self.tls_port = free_port()
        self.server = RedisServer(
            directory,
            "--tls-port",
            str(self.tls_port),
            "--tls-cert-file",
            str(certificates.cert_file),
            "--tls-key-file",
            str(certificates.key_file),
            "--tls-ca-cert-file",
            str(certificates.ca_file),
            "--tls-auth-clients",
            "no",
        )

    def url(self, ca_file: Path) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={ca_file}"


@pytest.fixture(scope="module")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("redis-tls"), certificates)
    try:
        yield server
    finally:
        server.server.stop()


async def test_the_store_works_over_tls(tls_redis: TlsRedis, certificates: Certificates) -> None:
    store = RedisStore(tls_redis.url(certificates.ca_file), prefix="tls")
    await store.open()
    try:
        assert store.persistence is not None and store.persistence.appendfsync == "always"
        (delivery,) = await store.enqueue(message(1), ["a@example.org"], expires_at=T0 + HOUR)
        (claimed,) = await store.claim(T0, limit=10)
        assert claimed.delivery.id == delivery.id and claimed.message.raw == message(1).raw
        await store.complete(
            [
                DeliveryUpdate(
                    delivery_id=delivery.id, shard=delivery.shard, status=DeliveryStatus.DELIVERED
                )
            ],
            T0,
        )
        assert (await store.counts())[DeliveryStatus.DELIVERED] == 1
    finally:
        await store.close()


async def test_a_certificate_from_another_ca_is_refused(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    store = RedisStore(tls_redis.url(stranger), prefix="tls")
    with pytest.raises(StoreError, match=r"cannot reach Redis at .*certificate verify failed"):
        await store.open()
    await store.close()


async def test_plain_redis_to_the_tls_port_fails_clearly(tls_redis: TlsRedis) -> None:
    store = RedisStore(f"redis://127.0.0.1:{tls_redis.tls_port}/0", prefix="tls")
    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        await store.open()
    await store.close()
