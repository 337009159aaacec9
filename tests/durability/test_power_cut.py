"""Files the gateway relies on after a crash survive a power cut: watched with strace.

Method (``tests/fsynctrace.py``): the real code runs in a child process under ``strace -f -y``,
which records every create, write, fsync, rename, link and mkdir with the paths involved; the
child is SIGKILLed right after the call under test returns (for the capture provider: right
after it reported ``sent``, which the dispatcher records as ``delivered``). The trace is then
replayed against the file systems' crash guarantee — data survives only if fsync'd after it
was written, a name only if its directory was fsync'd after it was made — to list what a
power cut at that instant would lose. Nothing may be lost.
"""

from __future__ import annotations

from pathlib import Path

from tests.fsynctrace import traced

CAPTURE = """
import asyncio, pathlib
from gateway.providers.base import OutboundMessage
from gateway.providers.capture import CaptureProvider

async def main():
    provider = CaptureProvider("capture", pathlib.Path({outbox!r}))
    await provider.start()
    for n in range(3):
        result = await provider.send(OutboundMessage(
            message_id=f"m{{n}}", delivery_id=n, tenant="default", mail_from="a@example.com",
            recipient="b@example.org", raw=b"Subject: hi\\r\\n\\r\\nbody\\r\\n" * 100,
            smtp_utf8=False, tags=(), metadata={{}}))
        assert result.kind == "sent", result
    print("sent")

asyncio.run(main())
"""


def test_capture_outbox_files_survive_a_power_cut_right_after_delivered(tmp_path: Path) -> None:
    outbox = tmp_path / "data" / "outbox"
    trace = traced(CAPTURE.format(outbox=str(outbox)), tmp_path)
    assert trace.stdout.strip() == "sent"
    made = [outbox / f"m{n}-{n}.{ext}" for n in range(3) for ext in ("eml", "json")]
    lost = [problem for path in [outbox, *made] for problem in trace.lost_on_power_cut(path)]
    assert lost == []


DATA_DIR = """
from gateway.config import parse_config
from gateway.server import prepare_data_dir

toml = "[gateway]\\ndata_dir = '{data}'\\nworkers = 2\\n"
config = parse_config(toml, source="test.toml")
prepare_data_dir(config)
print("prepared")
"""


def test_data_dir_and_spool_files_survive_a_power_cut_once_made(tmp_path: Path) -> None:
    data = tmp_path / "var" / "lib" / "gateway"
    trace = traced(DATA_DIR.format(data=str(data)), tmp_path)
    assert trace.stdout.strip() == "prepared"
    spool = data / "spool"
    made = [tmp_path / "var", data.parent, data, spool]
    made += [spool / "tenants.db", spool / "shard-0.db", spool / "shard-1.db"]
    lost = [problem for path in made for problem in trace.lost_on_power_cut(path)]
    assert lost == []


DKIM = """
import pathlib
from gateway.dkim_keys import keygen

keygen(pathlib.Path({keys!r}), "example.com", "s1", "ed25519")
keygen(pathlib.Path({keys!r}), "example.com", "s2", "ed25519")
print("generated")
"""


def test_new_dkim_keys_survive_a_power_cut_once_generated(tmp_path: Path) -> None:
    keys = tmp_path / "data" / "dkim"
    trace = traced(DKIM.format(keys=str(keys)), tmp_path)
    assert trace.stdout.strip() == "generated"
    domain = keys / "example.com"
    made = [keys, domain, domain / "s2.pem"]
    # s1 was superseded by s2: moved, durably, to the published keys.
    made += [p for p in domain.rglob("s1.pem")]
    assert len(made) == 4
    lost = [problem for path in made for problem in trace.lost_on_power_cut(path)]
    assert lost == []
