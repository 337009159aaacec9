"""The compliance footer: postal address, unsubscribe and preference links, and why the
recipient gets the mail — added to the HTML and the text when the template has none.

Its links are marked ``data-gateway-notrack``: an unsubscribe link must work as it is, not
through a click redirect (and a scanner's click must not count as engagement)."""

from __future__ import annotations

import html as html_lib

import msgspec


class FooterParts(msgspec.Struct, kw_only=True):
    postal_address: str
    unsubscribe_url: str
    preferences_url: str
    reason: str
    """"You receive this because …", from the recipient's subscription."""


def has_footer(body: str, parts: FooterParts, *, escaped: bool) -> bool:
    """The template already carries the address and this recipient's unsubscribe link."""
    address = parts.postal_address.strip().splitlines()[0] if parts.postal_address.strip() else ""
    url = html_lib.escape(parts.unsubscribe_url) if escaped else parts.unsubscribe_url
    if escaped:
        address = html_lib.escape(address, quote=False)
    return bool(address) and address in body and url in body


def add_html_footer(html: str, parts: FooterParts) -> str:
    if has_footer(html, parts, escaped=True):
        return html
    e = html_lib.escape
    address = "<br>".join(e(line.strip()) for line in parts.postal_address.strip().splitlines())
    block = (
        '<div class="gateway-footer" style="font-size:12px;color:#666;margin-top:24px">'
        f"<p>{e(parts.reason)}</p><p>{address}</p>"
        f'<p><a data-gateway-notrack href="{e(parts.unsubscribe_url)}">Unsubscribe</a> · '
        f'<a data-gateway-notrack href="{e(parts.preferences_url)}">Manage preferences</a></p>'
        "</div>"
    )
    end = html.lower().rfind("</body>")
    if end >= 0:
        return html[:end] + block + html[end:]
    return html + block


def add_text_footer(text: str, parts: FooterParts) -> str:
    if has_footer(text, parts, escaped=False):
        return text
    return (
        f"{text.rstrip()}\n\n-- \n{parts.reason}\n{parts.postal_address.strip()}\n"
        f"Unsubscribe: {parts.unsubscribe_url}\nManage preferences: {parts.preferences_url}\n"
    )
