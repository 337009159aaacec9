"""``gateway_accept_message``: one policy, enforced the same way over SMTP and HTTP."""

from __future__ import annotations

import smtplib

import pytest

from gateway.ingress import Submission
from gateway.message import Reject
from gateway.plugin_manager import hookimpl, make_plugin_manager
from gateway.store.base import DeliveryFilter
from tests.api.conftest import Api
from tests.conftest import GatewayThread, make_config

BODY = b"From: billing@acme.test\r\nTo: ann@example.org\r\nSubject: %s\r\n\r\nhello\r\n"
JSON = {"from": "billing@acme.test", "to": ["ann@example.org"], "text": "hello"}


class SubjectPolicy:
    """Refuses 'lottery' for good, 'later' for now, and crashes on 'crash'."""

    @hookimpl
    async def gateway_accept_message(self, submission: Submission) -> Reject | None:
        if b"lottery" in submission.raw:
            return Reject(550, "5.7.1", "Message refused by content policy")
        if b"later" in submission.raw:
            return Reject(451, "4.7.1", "Sending paused for this tenant")
        if b"crash" in submission.raw:
            raise RuntimeError("policy service unreachable")
        return None


SMTP = """
[smtp]
listeners = [{ name = "dev", port = 0, tls = "none", insecure_auth = true }]
[tenants.acme]
smtp_networks = ["127.0.0.1/32"]
"""


@pytest.fixture
def policed(api: Api) -> Api:
    api.gw.gateway.pm.register(SubjectPolicy(), name="subject-policy")
    return api


@pytest.fixture
def smtp_gateway(tmp_path, gateway_factory) -> GatewayThread:
    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(SubjectPolicy(), name="subject-policy")
    return gateway_factory(make_config(tmp_path, SMTP), deliver=False, plugin_manager=pm)


def queued(gw: GatewayThread) -> list[object]:
    return gw.call(gw.gateway.store.list_deliveries(DeliveryFilter()))


@pytest.mark.parametrize(
    ("subject", "code", "enhanced"),
    [(b"lottery", 550, b"5.7.1"), (b"later", 451, b"4.7.1"), (b"crash", 451, b"4.3.0")],
)
def test_smtp_refusals_come_from_the_policy(smtp_gateway, subject, code, enhanced) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_gateway.port("dev")) as client:
        client.ehlo()
        client.mail("billing@acme.test")
        client.rcpt("ann@example.org")
        reply_code, reply = client.data(BODY % subject)
    assert (reply_code, reply.split()[0]) == (code, enhanced)
    assert queued(smtp_gateway) == []


def test_smtp_mail_the_policy_allows_is_queued(smtp_gateway) -> None:
    with smtplib.SMTP("127.0.0.1", smtp_gateway.port("dev")) as client:
        client.sendmail("billing@acme.test", ["ann@example.org"], BODY % b"invoice")
    assert len(queued(smtp_gateway)) == 1


@pytest.mark.parametrize(
    ("subject", "status", "slug"),
    [
        ("lottery", 422, "refused-by-policy"),
        ("later", 503, "temporarily-refused"),
        ("crash", 503, "temporarily-unavailable"),
    ],
)
def test_http_refusals_come_from_the_same_policy(policed: Api, subject, status, slug) -> None:
    response = policed.client().post("/v1/messages", json={**JSON, "subject": subject})
    assert response.status_code == status, response.text
    assert response.json()["type"].endswith(slug)
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    assert policed.deliveries() == []
