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
