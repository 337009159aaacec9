"""Per-recipient CPU cost of the tracking transforms (click_tracking, open_pixel,
list_unsubscribe) on a ~5.6 KB text+HTML message with 10 links, in each transfer encoding.

Run:  .venv/bin/python bench/tracking_transforms.py
"""

import asyncio
import time
import types
from email import policy
from email.message import EmailMessage

import gateway_plugins.click_tracking as ct
import gateway_plugins.list_unsubscribe as lu
import gateway_plugins.open_pixel as op

from gateway.clock import FakeClock
from gateway.config import parse_config
from gateway.message import Delivery, DeliveryStatus, Message

config = parse_config("""
[tracking]
base_url = "https://t.example.com"
keys = { k1 = "0123456789abcdef0123456789abcdef0" }
[plugins.click_tracking]
[plugins.open_pixel]
[plugins.list_unsubscribe]
mailto = "u@example.com"
all_bulk = true
""")
gw = types.SimpleNamespace(config=config, plugin_state={}, clock=FakeClock(), store=None)
for m in (ct, op, lu):
    m.gateway_configure(gw)
PRODUCT = "https://shop.example.com/product/{i}?utm_source=news&amp;utm_campaign=spring"
PARAGRAPH = '<p>Paragraph {i}, padded a little. <a href="' + PRODUCT + '">Product {i}</a></p>\n'
links = "".join(PARAGRAPH.format(i=i) for i in range(10))
html = (
    "<html><head><title>t</title></head><body>"
    + links
    + ("<p>" + "lorem ipsum dolor sit amet " * 12 + "</p>\n") * 10
    + "</body></html>\n"
)
for cte in ("quoted-printable", "base64", "7bit"):
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.org"
    msg["Subject"] = "s"
    msg.set_content("text version", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte=cte)
    raw = msg.as_bytes()
    message = Message(
        id="0" * 22, tenant="default", mail_from="a@example.com", raw=raw, created_at=0
    )
    N = 2000

    async def run(message: Message = message, N: int = N) -> dict[str, float]:
        t = {"click": 0.0, "open": 0.0, "unsub": 0.0}
        for i in range(N):
            d = Delivery(
                id=i,
                message_id=message.id,
                recipient=f"r{i}@example.org",
                status=DeliveryStatus.SENDING,
            )
            m = message
            s = time.perf_counter()
            r = await ct.gateway_transform(gw, m, d)
            t["click"] += time.perf_counter() - s
            m = Message(id=m.id, tenant=m.tenant, mail_from=m.mail_from, raw=r, created_at=0)
            s = time.perf_counter()
            r = await op.gateway_transform(gw, m, d)
            t["open"] += time.perf_counter() - s
            m = Message(id=m.id, tenant=m.tenant, mail_from=m.mail_from, raw=r, created_at=0)
            s = time.perf_counter()
            r = await lu.gateway_transform(gw, m, d)
            t["unsub"] += time.perf_counter() - s
        return t

    t = asyncio.run(run())
    print(
        cte,
        len(raw),
        "bytes;",
        ", ".join(f"{k} {v / N * 1e6:.1f} us" for k, v in t.items()),
        f"total {sum(t.values()) / N * 1e6:.1f} us/recipient",
    )
