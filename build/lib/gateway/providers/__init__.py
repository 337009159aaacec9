"""Providers: the ways mail leaves the gateway. ``build_provider`` turns a config table into one."""

from __future__ import annotations

from gateway.config import (
    CaptureProviderSection,
    Config,
    MailgunProviderSection,
    MxProviderSection,
    PostmarkProviderSection,
    ProviderSection,
    SendgridProviderSection,
    SesProviderSection,
    SmtpProviderSection,
)
from gateway.providers.base import OutboundMessage, Provider, ProviderCheckFailed
from gateway.providers.capture import CaptureProvider
from gateway.providers.smtp_relay import SmtpRelayProvider

__all__ = ["OutboundMessage", "Provider", "ProviderCheckFailed", "build_provider"]


def build_provider(name: str, section: ProviderSection, config: Config) -> Provider:
    if isinstance(section, CaptureProviderSection):
        directory = section.directory or str(config.data_dir / "outbox")
        from pathlib import Path

        return CaptureProvider(name, Path(directory))
    if isinstance(section, SmtpProviderSection):
        return SmtpRelayProvider(name, section, local_hostname=config.gateway.hostname)
    if isinstance(section, SesProviderSection):
        from gateway.providers.ses import SesProvider

        return SesProvider(name, section)
    if isinstance(section, SendgridProviderSection):
        from gateway.providers.sendgrid import SendgridProvider

        return SendgridProvider(name, section)
    if isinstance(section, MailgunProviderSection):
        from gateway.providers.mailgun import MailgunProvider

        return MailgunProvider(name, section)
    if isinstance(section, PostmarkProviderSection):
        from gateway.providers.postmark import PostmarkProvider

        return PostmarkProvider(name, section)
    if isinstance(section, MxProviderSection):
        from gateway.providers.mx import MxProvider

        return MxProvider(name, section, local_hostname=config.gateway.hostname)
    raise TypeError(f"no provider for {type(section).__name__}")
