"""GDPR, black-box on both engines: a contact's export holds everything kept about it; erasure
removes its personal data from every audience table and its waiting deliveries from the
spool, keeps only a hash, and a re-import of the address is refused with ``suppressed``."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import sqlalchemy as sa
from gateway_plugins.audience import schema

from gateway.message import Delivery, DeliveryStatus
from gateway.store.base import DeliveryFilter
from tests.conftest import Sink, wait_until
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.audience.csv_faults import error_rows
from tests.plugins.audience.test_import import ATTESTATION, finished

ANN = "Ann.Erase@Example.org"


def test_export_then_erase_everywhere(
    audience_gateway: Callable[..., AudienceGateway], sink: Sink
) -> None:
    running = audience_gateway()
    acme, globex = running.client(), running.client("globex")
    ann = acme.post(
        "/v1/contacts", json={"email": ANN, "name": "Ann Erase", "attributes": {"city": "Rome"}}
    ).json()
    news = acme.post("/v1/lists", json={"name": "News"}).json()
    tips = acme.post("/v1/topics", json={"name": "Tips"}).json()
    acme.post(
        f"/v1/lists/{news['id']}/subscriptions",
        json={"contact_id": ann["id"], "consent": {"ip": "203.0.113.5", "statement": "ok"}},
    )
    acme.put(f"/v1/topics/{tips['id']}/contacts/{ann['id']}", json={"subscribed": True})
    # An import whose error rows quote the address (a bad time zone on Ann's row).
    bad_row = f"email,timezone\r\n{ANN},Nowhere/Land\r\nbob@example.org,UTC\r\n".encode()
    started = acme.post(f"/v1/lists/{news['id']}/imports", params=ATTESTATION, content=bad_row)
    first = finished(acme, started.json()["id"])
    assert first["counts"]["bad_timezone"] == 1
    # A message to Ann that waits in the spool (the next hop defers it).
    sink.script(ANN.lower(), "RCPT", ["451 4.2.0 try later"])
    with smtplib.SMTP("127.0.0.1", running.gw.port("dev"), timeout=20) as client:
        client.sendmail("app@acme.test", [ANN.lower()], "From: app@acme.test\r\n\r\nhi\r\n")
    spool = running.gw.gateway.store

    def waiting() -> list[Delivery]:
        return running.gw.call(
            spool.list_deliveries(
                DeliveryFilter(
                    recipient=ANN.lower(), statuses=[DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED]
                )
            )
        )

    wait_until(
        lambda: any(d.status == DeliveryStatus.DEFERRED for d in waiting()),
        20,
        "the delivery to be deferred",
    )

    exported = acme.get(f"/v1/contacts/{ann['id']}/export")
    assert exported.status_code == 200
    data = exported.json()
    assert data["contact"]["email"] == ANN and data["contact"]["attributes"] == {"city": "Rome"}
    assert [s["list_id"] for s in data["subscriptions"]] == [news["id"]]
    assert [t["topic_id"] for t in data["topics"]] == [tips["id"]]
    kinds = {e["kind"] for e in data["entries"]}
    assert {"consent.subscribe", "consent.topic", "delivery"} <= kinds

    assert globex.get(f"/v1/contacts/{ann['id']}/export").status_code == 404
    assert globex.post(f"/v1/contacts/{ann['id']}/erase").status_code == 404

    erased = acme.post(f"/v1/contacts/{ann['id']}/erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["cancelled_deliveries"] == 1
    assert waiting() == []
    assert acme.get(f"/v1/contacts/{ann['id']}").status_code == 404

    # No audience table holds the address or the name any more, in any spelling.
    async def every_row() -> str:
        async with running.store.engine.connect() as conn:
            dumps = [
                repr((await conn.execute(sa.select(t))).all())
                for t in schema.metadata.sorted_tables
            ]
        return "\n".join(dumps).lower()

    everything = running.gw.call(every_row())
    assert "ann.erase" not in everything and "rome" not in everything
    assert "203.0.113.5" not in everything
    _, rows = error_rows(acme.get(f"/v1/imports/{first['id']}/errors.csv").content)
    assert rows == {}

    again = f"email\r\n{ANN.upper()}\r\n".encode()
    redo = acme.post(f"/v1/lists/{news['id']}/imports", params=ATTESTATION, content=again)
    result = finished(acme, redo.json()["id"])
    assert result["counts"]["suppressed"] == 1 and result["counts"]["created"] == 0
    _, rows = error_rows(acme.get(f"/v1/imports/{result['id']}/errors.csv").content)
    assert rows == {2: "suppressed"}
