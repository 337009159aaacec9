"""Black-box: versions (enrolments keep theirs), pause holds due steps and resume runs them,
archive ends enrolments, flow events reach the sender's webhook, and ``gateway flows`` shows
counts and a contact's path from the same database."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Sink, wait_until
from tests.ops.conftest import new_secret
from tests.plugins.audience.conftest import AudienceGateway, Receiver
from tests.plugins.audience.databases import Database
from tests.plugins.tracking_env import parse


def flow(subject: str) -> dict[str, Any]:
    return {
        "name": "welcome",
        "trigger": {"event": "signed_up"},
        "steps": [
            {"type": "wait", "until": "09:00"},
            {"type": "send", "from": "hi@acme.test", "subject": subject, "text": "Hello"},
        ],
    }


def test_versions_pause_resume_archive_webhooks_and_cli(
    automation_gateway: Callable[..., AudienceGateway],
    sink: Sink,
    receiver: Receiver,
    audience_db: Database,
    tmp_path: Path,
) -> None:
    secret = new_secret()
    running = automation_gateway(
        f'[tenants.acme.webhooks.crm]\nurl = "{receiver.url}"\nsecret = "{secret}"\n'
        'events = ["flow.send", "flow.end"]\n'
    )
    admin, sender, clock = running.client(), running.client("acme", "sender"), running.clock
    created = admin.post("/v1/flows", json=flow("Welcome v1")).json()
    flow_id = created["id"]

    def signup(who: str, zone: str = "") -> int:
        admin.post("/v1/contacts", json={"email": f"{who}@example.org", "timezone": zone})
        answer = sender.post(
            "/v1/events", json={"id": who, "name": "signed_up", "email": f"{who}@example.org"}
        )
        assert answer.json()["enrolled"], answer.text
        return int(answer.json()["contact_id"])

    ann = signup("ann", "Asia/Tokyo")
    changed = admin.put(f"/v1/flows/{flow_id}", json=flow("Welcome v2"))
    assert changed.status_code == 200 and changed.json()["version"] == 2
    bob = signup("bob")
    cyd = signup("cyd")
    paused = admin.post(f"/v1/flows/{flow_id}/pause")
    assert paused.json()["status"] == "paused"
    clock.advance(86400 + 60)  # every 09:00 has passed, in any zone
    assert not sender.post(
        "/v1/events", json={"id": "dee", "name": "signed_up", "email": "dee@example.org"}
    ).json()["enrolled"]  # a paused flow enrols no one
    assert sink.messages == []  # due, but held
    admin.post(f"/v1/flows/{flow_id}/resume")
    wait_until(lambda: len(sink.messages) == 3, 20, "the held mails")
    subjects = {m.rcpt_tos[0]: str(parse(m.data)["Subject"]) for m in sink.messages}
    assert subjects == {
        "ann@example.org": "Welcome v1",
        "bob@example.org": "Welcome v2",
        "cyd@example.org": "Welcome v2",
    }
    (enrolment,) = admin.get("/v1/enrolments", params={"contact_id": ann}).json()
    assert enrolment["version"] == 1
    sent_at = next(p["at"] for p in enrolment["path"] if p["kind"] == "send")
    assert sent_at.endswith("T00:00:00Z")  # 09:00 in Tokyo
    wait_until(lambda: len(receiver.received()) >= 6, 20, "flow webhooks")
    # signed (the fake clock is a day ahead, so only the signature's presence is checked here)
    assert all("webhook-signature" in r.headers for r in receiver.received())
    kinds = sorted(json.loads(r.body)["type"] for r in receiver.received())
    assert kinds == ["flow.end"] * 3 + ["flow.send"] * 3

    # archive: a new enrolment in flight ends for good
    admin.put(f"/v1/flows/{flow_id}", json=flow("Welcome v3"))
    eve = signup("eve")
    archived = admin.post(f"/v1/flows/{flow_id}/archive")
    assert archived.json()["status"] == "archived"
    assert admin.post(f"/v1/flows/{flow_id}/resume").status_code == 409
    [(state, reason)] = [
        (e["state"], e["reason"])
        for e in admin.get("/v1/enrolments", params={"contact_id": eve}).json()
    ]
    assert (state, reason) == ("exited", "archived")
    shown = admin.get(f"/v1/flows/{flow_id}").json()
    assert shown["stats"]["enrolled"] == 4
    assert admin.get(f"/v1/flows/{flow_id}", params={"version": 1}).json()["definition"] == flow(
        "Welcome v1"
    )

    config = tmp_path / "cli.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        + audience_db.toml()
        + "[plugins.automation]\n"
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "-c",
                str(config),
                "flows",
                *args,
                "--tenant",
                "acme",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"{flow_id}\twelcome\tarchived\tv3\tsigned_up" in cli("list")
    assert '"enrolled": 4' in cli("show", str(flow_id))
    path = cli("path", str(bob))
    assert "completed" in path and "\tsend\tsent\t" in path
    assert cyd != bob
