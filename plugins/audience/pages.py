"""Hosted pages, server-rendered, usable without JavaScript: signup, double opt-in
confirmation, unsubscribe and the preference center.

A GET never changes anything — link scanners fetch every URL in a mail — so confirming and
unsubscribing happen only on the POST of the page's button, which carries the page's CSRF
token. Links are purpose-bound page tokens (:mod:`.page_tokens`); an expired one offers a
fresh link by mail instead of a dead end. Pages are Jinja2 templates (a ``templates_dir``
overrides them file by file) translated with gettext catalogs (``locale/<lang>/LC_MESSAGES/
audience.po``, compiled in memory at start); the language is the contact's locale, else the
browser's ``Accept-Language``.
"""

from __future__ import annotations

import collections
import gettext
import io
from email.message import EmailMessage
from email.utils import formatdate
from importlib import resources
from typing import Any

import jinja2
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.audience.model import ConsentEvidence, Contact, SubscriptionStatus
from gateway_plugins.audience.page_tokens import PageTokenError, PageTokens, Purpose
from gateway_plugins.audience.store import AudienceStore, ContactChanges, NotFound
from litestar import Request, Response, get, post
from litestar.params import FromPath

from gateway.events import ContactEvent, ContactEventKind, publish_contact_event
from gateway.ingress import Submission

LANGUAGES = (("en", "English"), ("de", "Deutsch"))
FREQUENCIES = ("immediate", "daily", "weekly", "monthly")
STATEMENT = "I agree to receive this newsletter and can unsubscribe at any time."
STATEMENT_VERSION = "signup-v1"
_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
}


def load_translations() -> dict[str, gettext.NullTranslations]:
    """Every shipped catalog, compiled from its .po in memory (no binary .mo in the tree)."""
    catalogs: dict[str, gettext.NullTranslations] = {"en": gettext.NullTranslations()}
    root = resources.files("gateway_plugins.audience") / "locale"
    for code, _ in LANGUAGES:
        po = root / code / "LC_MESSAGES" / "audience.po"
        if code == "en" or not po.is_file():
            continue
        with po.open("rb") as f:
            catalog = read_po(f, locale=code)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        catalogs[code] = gettext.GNUTranslations(buffer)
    return catalogs


class PerIpLimit:
    """At most ``limit`` signups per client IP per hour, per worker (a sliding window)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._hits: dict[str, collections.deque[float]] = {}

    def allow(self, ip: str, now: float) -> bool:
        hits = self._hits.setdefault(ip, collections.deque())
        while hits and hits[0] <= now - 3600:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        if len(self._hits) > 100_000:  # forget idle addresses rather than grow without bound
            self._hits = {k: v for k, v in self._hits.items() if v}
        return True


class Pages:
    def __init__(self, gateway: Any, settings: Any) -> None:
        self.gateway = gateway
        self.settings = settings
        self.tokens = PageTokens(settings.keys, settings.signing_key or next(iter(settings.keys)))
        self.translations = load_translations()
        loaders: list[jinja2.BaseLoader] = []
        if settings.templates_dir:
            loaders.append(jinja2.FileSystemLoader(settings.templates_dir))
        loaders.append(jinja2.PackageLoader("gateway_plugins.audience", "templates"))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=True,
            extensions=["jinja2.ext.i18n"],
        )
        self.signups = PerIpLimit(settings.signups_per_ip_hour)

    @property
    def store(self) -> AudienceStore:
        from gateway_plugins.audience import audience_of

        return audience_of(self.gateway).store

    def now(self) -> float:
        now: float = self.gateway.clock.now()
        return now

    # --- rendering -----------------------------------------------------------------------------

    def language(self, request: Request[Any, Any, Any], contact: Contact | None = None) -> str:
        if contact is not None and contact.locale[:2] in self.translations:
            return contact.locale[:2]
        for part in request.headers.get("accept-language", "").split(","):
            code = part.split(";")[0].strip().lower()[:2]
            if code in self.translations:
                return code
        return "en"

    def render(self, lang: str, template: str, status: int = 200, **context: Any) -> Response[str]:
        translations = self.translations.get(lang, self.translations["en"])
        env = self.env.overlay()
        env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
        tenant = context.get("tenant", "")
        brand = {"name": tenant or "Newsletter", "color": "#1f4e9e"}
        brand.update(self.settings.branding.get(tenant, {}))
        if "title" in context:
            context["title"] = translations.gettext(context["title"])
        body = env.get_template(template).render(lang=lang, brand=brand, **context)
        return Response(body, status_code=status, media_type="text/html", headers=_NO_STORE)

    def message(
        self, lang: str, title: str, text: str, status: int = 200, **context: Any
    ) -> Response[str]:
        translations = self.translations.get(lang, self.translations["en"])
        return self.render(
            lang, "message.html", status, title=title, message=translations.gettext(text), **context
        )

    def refused(self, lang: str, e: PageTokenError, fresh_action: str) -> Response[str]:
        if e.reason == "expired":
            # An expired link is genuine: offer a fresh one instead of a dead end.
            return self.message(
                lang,
                "This link has expired",
                "This link is no longer valid. We can send you a new one.",
                410,
                fresh_token=e.payload and self.tokens.sign(
                    "preferences", e.payload.tenant, e.payload.contact_id, e.payload.list_id,
                    self.now(),
                ),
                fresh_action=fresh_action,
            )  # fmt: skip
        return self.message(lang, "Link not valid", "This link is not valid.", 400)

    # --- mail ----------------------------------------------------------------------------------

    def link(self, purpose: Purpose, tenant: str, contact_id: int, list_id: int) -> str:
        token = self.tokens.sign(purpose, tenant, contact_id, list_id, self.now())
        path = {"confirm": "confirm", "preferences": "preferences", "unsubscribe": "unsubscribe"}
        return f"{self.settings.base_url.rstrip('/')}/p/{path[purpose]}/{token}"

    async def send_link(
        self, purpose: Purpose, contact: Contact, list_id: int, list_name: str, lang: str
    ) -> bool:
        """Mail the contact a confirm (or fresh preferences) link, at most
        ``confirmations_per_address_day`` per address per day; whether one was sent."""
        sent = await self.store.count_link_mails(contact.tenant, contact.id, self.now() - 86400)
        if sent >= self.settings.confirmations_per_address_day:
            return False
        t = self.translations.get(lang, self.translations["en"])
        url = self.link(purpose, contact.tenant, contact.id, list_id)
        mail = EmailMessage()
        mail["From"] = self.settings.mail_from
        mail["To"] = contact.email_key
        mail["Date"] = formatdate(self.now())
        if purpose == "confirm":
            mail["Subject"] = t.gettext("Please confirm your subscription")
            text = t.gettext("Please confirm that you want to receive %(list)s:") % {
                "list": list_name
            }
        else:
            mail["Subject"] = t.gettext("Your link")
            text = t.gettext("Here is a new link to your subscription:")
        mail.set_content(f"{text}\n\n{url}\n")
        await self.gateway.ingress.accept(
            Submission(
                tenant=contact.tenant,
                mail_from=self.settings.mail_from,
                recipients=[contact.email_key],
                raw=mail.as_bytes(policy=mail.policy.clone(linesep="\r\n")),
                source="http",
                protocol="HTTP",
            )
        )
        await self.store.record_link_mail(contact.tenant, contact.id, self.now())
        return True

    async def preference_choices(self, contact: Contact) -> dict[str, Any]:
        """The lists (public ones, and any the contact is on) and topics of the page."""
        tenant = contact.tenant
        subscriptions = {
            s.list_id: s.status for s in await self.store.subscriptions_of(tenant, contact.id)
        }
        preferences = {p.topic_id: p for p in await self.store.topics_of(tenant, contact.id)}
        lists = [
            {"id": m.id, "name": m.name, "on": subscriptions.get(m.id) == "active"}
            for m in await self.store.list_lists(tenant, limit=1000)
            if m.visibility == "public" or m.id in subscriptions
        ]
        topics = []
        for topic in await self.store.list_topics(tenant, limit=1000):
            chosen = preferences.get(topic.id)
            topics.append(
                {
                    "id": topic.id,
                    "name": topic.name,
                    "on": chosen.subscribed if chosen else False,
                    "frequency": chosen.frequency if chosen else topic.default_frequency,
                }
            )
        return {"lists": lists, "topics": topics}

    async def save_preferences(
        self, contact: Contact, form: Any, client: tuple[str, str]
    ) -> Contact:
        """Apply the preference form: name, language, each list and topic on one page."""
        tenant, ip, agent = contact.tenant, client[0], client[1]
        evidence = ConsentEvidence(
            method="preference-center", form_id="preferences", ip=ip, user_agent=agent
        )
        everything_off = form.get("unsubscribe_all") == "1"
        locale = str(form.get("locale", contact.locale))
        changes = ContactChanges(
            name=str(form.get("name", contact.name)).strip()[:200],
            locale=locale if locale in dict(LANGUAGES) else contact.locale,
        )
        contact = await self.store.update_contact(tenant, contact.id, changes)
        wanted_lists = (
            set() if everything_off else {int(v) for v in form.getall("list", []) if v.isdigit()}
        )
        wanted_topics = (
            set() if everything_off else {int(v) for v in form.getall("topic", []) if v.isdigit()}
        )
        choices = await self.preference_choices(contact)
        changed = False
        for item in choices["lists"]:
            if item["on"] and item["id"] not in wanted_lists:
                _, done = await self.store.unsubscribe(
                    tenant, item["id"], contact.id, evidence=evidence
                )
                changed |= done
            elif not item["on"] and item["id"] in wanted_lists:
                _, done = await self.store.subscribe(
                    tenant, item["id"], contact.id, status="active", evidence=evidence,
                    resubscribe=True,
                )  # fmt: skip
                changed |= done
        for item in choices["topics"]:
            frequency = str(form.get(f"frequency-{item['id']}", item["frequency"]))
            on = item["id"] in wanted_topics
            if on != item["on"] or frequency != item["frequency"]:
                await self.store.set_topic(
                    tenant, item["id"], contact.id, subscribed=on,
                    frequency=frequency if frequency in FREQUENCIES else None,  # type: ignore[arg-type]
                    evidence=evidence,
                )  # fmt: skip
                changed = True
        if changed:
            await self.publish("preferences_changed", contact, None, "preference-center")
        return contact

    async def publish(
        self, kind: ContactEventKind, contact: Contact, list_id: int | None, source: str
    ) -> None:
        await publish_contact_event(
            self.gateway,
            ContactEvent(
                type=kind,
                tenant=contact.tenant,
                contact_id=contact.id,
                email=contact.email,
                at=self.now(),
                list_id=list_id,
                source=source,
            ),
        )


def _client(request: Request[Any, Any, Any]) -> tuple[str, str]:
    ip = request.client.host if request.client else ""
    return ip, request.headers.get("user-agent", "")[:1000]


def page_routes(gateway: Any, settings: Any) -> list[Any]:
    pages = Pages(gateway, settings)

    @get("/p/{tenant:str}/lists/{list_id:int}/signup", include_in_schema=False)
    async def signup_form(
        request: Request[Any, Any, Any], tenant: FromPath[str], list_id: FromPath[int]
    ) -> Response[str]:
        lang = pages.language(request)
        found = await _public_list(pages.store, tenant, list_id)
        if found is None:
            return pages.message(lang, "Not found", "There is no such list.", 404)
        return pages.render(
            lang,
            "signup.html",
            title=found.name,
            tenant=tenant,
            email="",
            name="",
            statement=STATEMENT,
        )

    @post("/p/{tenant:str}/lists/{list_id:int}/signup", include_in_schema=False, status_code=200)
    async def signup(
        request: Request[Any, Any, Any], tenant: FromPath[str], list_id: FromPath[int]
    ) -> Response[str]:
        lang = pages.language(request)
        found = await _public_list(pages.store, tenant, list_id)
        if found is None:
            return pages.message(lang, "Not found", "There is no such list.", 404)
        form = await request.form()
        ip, agent = _client(request)
        if not pages.signups.allow(ip, pages.now()):
            return pages.message(
                lang, "Too many requests", "Too many signups from your network; try again later.",
                429,
            )  # fmt: skip
        check_mail = pages.message(
            lang, "Check your inbox", "We sent you an email. Click the link in it to confirm."
        )
        if form.get("website"):
            return check_mail  # a bot filled the honeypot: look the same, do nothing
        email, name = str(form.get("email", "")).strip(), str(form.get("name", "")).strip()[:200]
        try:
            contact, _ = await pages.store.upsert_contact(
                tenant, email, ContactChanges(name=name) if name else None
            )
        except AddressError:
            t = pages.translations.get(lang, pages.translations["en"])
            return pages.render(
                lang, "signup.html", 422, title=found.name, tenant=tenant, email=email,
                name=name, statement=STATEMENT,
                error=t.gettext("Please enter a valid email address."),
            )  # fmt: skip
        evidence = ConsentEvidence(
            method="form",
            form_id=f"signup:{list_id}",
            ip=ip,
            user_agent=agent,
            statement_version=STATEMENT_VERSION,
            statement=STATEMENT,
            collected_at=pages.now(),
        )
        status: SubscriptionStatus = "pending" if found.opt_in == "double" else "active"
        subscription, changed = await pages.store.subscribe(
            tenant, list_id, contact.id, status=status, evidence=evidence, resubscribe=True
        )
        if subscription.status == "pending":
            await pages.send_link("confirm", contact, list_id, found.name, lang)
            if changed:
                await pages.publish("subscribed", contact, list_id, "form")
            return check_mail
        if changed:
            await pages.publish("subscribed", contact, list_id, "form")
        return pages.message(lang, "Subscribed", "You are subscribed. Welcome!")

    async def _confirming(
        request: Request[Any, Any, Any], token: str
    ) -> tuple[Any, Contact, Any] | Response[str]:
        lang = pages.language(request)
        try:
            payload = pages.tokens.verify(token, "confirm", pages.now())
        except PageTokenError as e:
            return pages.refused(lang, e, "/p/fresh-link")
        try:
            contact = await pages.store.get_contact(payload.tenant, payload.contact_id)
            found = await pages.store.get_list(payload.tenant, payload.list_id)
        except NotFound:
            return pages.message(lang, "Link not valid", "This link is not valid.", 404)
        return payload, contact, found

    @get("/p/confirm/{token:str}", include_in_schema=False)
    async def confirm_page(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[str]:
        checked = await _confirming(request, token)
        if isinstance(checked, Response):
            return checked
        _, contact, found = checked
        lang = pages.language(request, contact)
        t = pages.translations.get(lang, pages.translations["en"])
        return pages.render(
            lang, "confirm.html", title="Confirm your subscription", tenant=contact.tenant,
            list_name=found.name, email=contact.email, csrf=pages.tokens.csrf(token),
            action=t.gettext("Confirm"),
        )  # fmt: skip

    @post("/p/confirm/{token:str}", include_in_schema=False, status_code=200)
    async def confirm(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[str]:
        checked = await _confirming(request, token)
        if isinstance(checked, Response):
            return checked
        payload, contact, found = checked
        lang = pages.language(request, contact)
        form = await request.form()
        if not pages.tokens.check_csrf(token, str(form.get("csrf", ""))):
            return pages.message(
                lang, "Link not valid", "This form has expired; open the link again.", 403
            )
        ip, agent = _client(request)
        evidence = ConsentEvidence(
            method="form", form_id=f"signup:{found.id}", ip=ip, user_agent=agent,
            statement_version=STATEMENT_VERSION, statement=STATEMENT,
            confirmed_at=pages.now(),
        )  # fmt: skip
        _, changed = await pages.store.subscribe(
            payload.tenant,
            found.id,
            contact.id,
            status="active",
            evidence=evidence,
            resubscribe=True,
        )
        if changed:
            await pages.publish("confirmed", contact, found.id, "form")
        return pages.message(
            lang, "Subscription confirmed", "Thank you, your subscription is confirmed."
        )

    @post("/p/fresh-link", include_in_schema=False, status_code=200)
    async def fresh_link(request: Request[Any, Any, Any]) -> Response[str]:
        lang = pages.language(request)
        form = await request.form()
        try:
            payload = pages.tokens.verify(str(form.get("token", "")), "preferences", pages.now())
            contact = await pages.store.get_contact(payload.tenant, payload.contact_id)
            found = await pages.store.get_list(payload.tenant, payload.list_id)
        except (PageTokenError, NotFound):
            return pages.message(lang, "Link not valid", "This link is not valid.", 400)
        subscriptions = {
            s.list_id: s.status
            for s in await pages.store.subscriptions_of(payload.tenant, contact.id)
        }
        purpose: Purpose = "confirm" if subscriptions.get(found.id) == "pending" else "preferences"
        await pages.send_link(purpose, contact, found.id, found.name, lang)
        return pages.message(lang, "Check your inbox", "We sent you an email with a new link.")

    @get("/p/unsubscribe/{token:str}", include_in_schema=False)
    async def unsubscribe_page(
        request: Request[Any, Any, Any], token: FromPath[str]
    ) -> Response[str]:
        lang = pages.language(request)
        try:
            payload = pages.tokens.verify(token, "unsubscribe", pages.now())
            found = await pages.store.get_list(payload.tenant, payload.list_id)
        except PageTokenError as e:
            return pages.refused(lang, e, "/p/fresh-link")
        except NotFound:
            return pages.message(lang, "Link not valid", "This link is not valid.", 404)
        t = pages.translations.get(lang, pages.translations["en"])
        return pages.render(
            lang, "confirm.html", title="Unsubscribe", tenant=payload.tenant, list_name=found.name,
            email="", csrf=pages.tokens.csrf(token), action=t.gettext("Unsubscribe"),
        )  # fmt: skip

    @post("/p/unsubscribe/{token:str}", include_in_schema=False, status_code=200)
    async def unsubscribe(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[str]:
        lang = pages.language(request)
        try:
            payload = pages.tokens.verify(token, "unsubscribe", pages.now())
            contact = await pages.store.get_contact(payload.tenant, payload.contact_id)
        except PageTokenError as e:
            return pages.refused(lang, e, "/p/fresh-link")
        except NotFound:
            return pages.message(lang, "Link not valid", "This link is not valid.", 404)
        form = await request.form()
        if not pages.tokens.check_csrf(token, str(form.get("csrf", ""))):
            return pages.message(
                lang, "Link not valid", "This form has expired; open the link again.", 403
            )
        ip, agent = _client(request)
        evidence = ConsentEvidence(
            method="form", form_id="unsubscribe-page", ip=ip, user_agent=agent
        )
        _, changed = await pages.store.unsubscribe(
            payload.tenant, payload.list_id, contact.id, evidence=evidence
        )
        if changed:
            await pages.publish("unsubscribed", contact, payload.list_id, "form")
        return pages.message(lang, "Unsubscribed", "You will not receive this list any more.")

    async def _preferences_of(
        request: Request[Any, Any, Any], token: str
    ) -> tuple[Any, Contact] | Response[str]:
        lang = pages.language(request)
        try:
            payload = pages.tokens.verify(token, "preferences", pages.now())
            contact = await pages.store.get_contact(payload.tenant, payload.contact_id)
        except PageTokenError as e:
            return pages.refused(lang, e, "/p/fresh-link")
        except NotFound:
            return pages.message(lang, "Link not valid", "This link is not valid.", 404)
        return payload, contact

    async def _preference_page(
        request: Request[Any, Any, Any], token: str, contact: Contact, saved: bool
    ) -> Response[str]:
        lang = pages.language(request, contact)
        t = pages.translations.get(lang, pages.translations["en"])
        choices = await pages.preference_choices(contact)
        frequencies = [(f, t.gettext(f.capitalize())) for f in FREQUENCIES]
        return pages.render(
            lang, "preferences.html", title="Your preferences", tenant=contact.tenant,
            contact=contact, csrf=pages.tokens.csrf(token), languages=LANGUAGES,
            frequencies=frequencies, saved=saved, **choices,
        )  # fmt: skip

    @get("/p/preferences/{token:str}", include_in_schema=False)
    async def preferences_page(
        request: Request[Any, Any, Any], token: FromPath[str]
    ) -> Response[str]:
        checked = await _preferences_of(request, token)
        if isinstance(checked, Response):
            return checked
        return await _preference_page(request, token, checked[1], saved=False)

    @post("/p/preferences/{token:str}", include_in_schema=False, status_code=200)
    async def save_preferences(
        request: Request[Any, Any, Any], token: FromPath[str]
    ) -> Response[str]:
        checked = await _preferences_of(request, token)
        if isinstance(checked, Response):
            return checked
        contact = checked[1]
        form = await request.form()
        lang = pages.language(request, contact)
        if not pages.tokens.check_csrf(token, str(form.get("csrf", ""))):
            return pages.message(
                lang, "Link not valid", "This form has expired; open the link again.", 403
            )
        contact = await pages.save_preferences(contact, form, _client(request))
        return await _preference_page(request, token, contact, saved=True)

    return [
        signup_form,
        signup,
        confirm_page,
        confirm,
        fresh_link,
        unsubscribe_page,
        unsubscribe,
        preferences_page,
        save_preferences,
    ]


async def _public_list(store: AudienceStore, tenant: str, list_id: int) -> Any:
    try:
        found = await store.get_list(tenant, list_id)
    except NotFound:
        return None
    return found if found.visibility == "public" else None
