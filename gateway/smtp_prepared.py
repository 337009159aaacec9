"""aiosmtpd's ``SMTP`` protocol with its per-connection set-up done once per class and handler.

aiosmtpd 1.4.6 builds three method tables in ``SMTP.__init__`` — AUTH mechanisms with
``inspect.getmembers`` over the protocol *and* the handler, handler hooks and SMTP commands
with ``dir()`` — and inspects the ``handle_EHLO`` signature, for every connection. That was
~120 µs of a 1.1 ms message when clients connect once per message. The names in those tables
depend only on the protocol class and the handler object, so ``PreparedSMTP`` computes them
once and per connection only binds the protocol's own methods.

The constructor mirrors aiosmtpd 1.4.6's line by line otherwise (same attributes, same
warnings). aiosmtpd also logs every command line twice (DEBUG and INFO) through
``sanitized_log``, which masks AUTH secrets in the arguments before asking the logger whether
the level is enabled; ``_sanitized_log`` asks first (~2 µs a line, ten lines a message).

``tests/unit/test_smtp_prepared.py`` checks that the constructor leaves exactly the state the
stock one leaves, and fails on an aiosmtpd whose ``SMTP.__init__`` differs from the one
mirrored here.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import weakref
from collections.abc import Iterable
from typing import Any
from warnings import warn

import aiosmtpd.smtp
from aiosmtpd.smtp import (
    CALL_LIMIT_DEFAULT,
    DATA_SIZE_DEFAULT,
    SMTP,
    AuthCallbackType,
    AuthenticatorType,
    _AuthMechAttr,
    login_always_fail,
    make_loop,
)
from aiosmtpd.smtp import __ident__ as _AIOSMTPD_IDENT

log = logging.getLogger("mail.log")  # aiosmtpd's logger: its messages stay where they were

MIRRORED_INIT_SHA256 = "8a9ca80f23ad9bf273e58e284170e9f919dc6269b280ca0624ac0603a8ad3604"
"""SHA-256 of the source of the aiosmtpd ``SMTP.__init__`` this module mirrors."""


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log``, skipped when ``func``'s logger would drop the record."""
    logger = getattr(func, "__self__", None)
    level = _LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None:
        if not logger.isEnabledFor(level):
            return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log  # looked up as a global by SMTP._handle_client


class _HandlerTables:
    """What aiosmtpd derives from a handler object: its AUTH mechanisms, its hooks, and
    which ``handle_EHLO`` signature it has."""

    def __init__(self, handler: Any) -> None:
        self.auth_methods = {
            getattr(mfunc, "__auth_mechanism_name__", _mechanism(name)): _AuthMechAttr(mfunc, False)
            for name, mfunc in inspect.getmembers(handler)
            if name.startswith("auth_")
        }
        self.handle_hooks = {
            name.replace("handle_", ""): getattr(handler, name)
            for name in dir(handler)
            if name.startswith("handle_")
        }
        ehlo_hook = self.handle_hooks.get("EHLO")
        self.ehlo_hook_ver: str | None = None
        if ehlo_hook is not None:
            parameters = len(inspect.signature(ehlo_hook).parameters)
            if parameters == 4:
                self.ehlo_hook_ver = "old"
            elif parameters == 5:
                self.ehlo_hook_ver = "new"
            else:
                raise RuntimeError("Unsupported EHLO Hook")


class _ClassTables:
    """The protocol class's own AUTH mechanisms and SMTP commands, as attribute names."""

    def __init__(self, cls: type[SMTP]) -> None:
        self.auth_methods = [
            (getattr(mfunc, "__auth_mechanism_name__", _mechanism(name)), name)
            for name, mfunc in inspect.getmembers(cls)
            if name.startswith("auth_")
        ]
        self.smtp_methods = [
            (name.replace("smtp_", ""), name) for name in dir(cls) if name.startswith("smtp_")
        ]


def _mechanism(attribute: str) -> str:
    return attribute.replace("auth_", "").replace("__", "-")


_class_tables: dict[type[SMTP], _ClassTables] = {}
_handler_tables: weakref.WeakKeyDictionary[Any, _HandlerTables] = weakref.WeakKeyDictionary()


def _tables_for(cls: type[SMTP], handler: Any) -> tuple[_ClassTables, _HandlerTables]:
    own = _class_tables.get(cls)
    if own is None:
        own = _class_tables[cls] = _ClassTables(cls)
    try:
        theirs = _handler_tables.get(handler)
    except TypeError:  # not weak-referenceable: no cache, as aiosmtpd does
        return own, _HandlerTables(handler)
    if theirs is None:
        theirs = _HandlerTables(handler)
        if theirs.ehlo_hook_ver == "old":
            # aiosmtpd warns per connection; warn on the first, as it would, and keep going.
            _warn_old_ehlo()
        _handler_tables[handler] = theirs
    elif theirs.ehlo_hook_ver == "old":
        _warn_old_ehlo()
    return own, theirs


def _warn_old_ehlo() -> None:
    warn(
        "Use the 5-argument handle_EHLO() hook instead of "
        "the 4-argument handle_EHLO() hook; "
        "support for the 4-argument handle_EHLO() hook will be "
        "removed in version 2.0",
        DeprecationWarning,
        stacklevel=4,
    )


class PreparedSMTP(SMTP):
    """``aiosmtpd.smtp.SMTP`` whose method tables are computed once per class and handler.

    Subclasses may add ``smtp_*`` and ``auth_*`` methods as usual; they are found when the
    first connection of that class is made. Methods added to a class or handler *after* its
    first connection are not (aiosmtpd would have seen them on the next connection).
    """

    def __init__(
        self,
        handler: Any,
        *,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: str | None = None,
        ident: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: Iterable[str] | None = None,
        auth_callback: AuthCallbackType | None = None,
        command_call_limit: int | dict[str, int] | None = None,
        authenticator: AuthenticatorType | None = None,
        proxy_protocol_timeout: int | float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.__ident__ = ident or _AIOSMTPD_IDENT
        self.loop = loop if loop else make_loop()
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        self.event_handler = handler
        assert data_size_limit is None or isinstance(data_size_limit, int)
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname if hostname else socket.getfqdn()
        self.tls_context = tls_context
        if tls_context:
            if tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
                log.warning(
                    "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
                    "this might cause client connection problems"
                )
            elif tls_context.check_hostname:
                log.warning(
                    "tls_context.check_hostname == True; "
                    "this might cause client connection problems"
                )
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        if not auth_require_tls and auth_required:
            warn(
                "Requiring AUTH while not requiring TLS can lead to security vulnerabilities!",
                stacklevel=2,
            )
            log.warning("auth_required == True but auth_require_tls == False")
        self._auth_require_tls = auth_require_tls

        if proxy_protocol_timeout is not None:
            if proxy_protocol_timeout <= 0:
                raise ValueError("proxy_protocol_timeout must be > 0")
            elif proxy_protocol_timeout < 3.0:
                log.warning("proxy_protocol_timeout < 3.0")
        self._proxy_timeout = proxy_protocol_timeout

        if authenticator is not None:
            self._authenticator = authenticator
            self._auth_callback = None
        else:
            self._auth_callback = auth_callback or login_always_fail
            self._authenticator = None
        self._auth_required = auth_required

        own, theirs = _tables_for(type(self), handler)
        self._auth_methods = {
            mechanism: _AuthMechAttr(getattr(self, name), True)
            for mechanism, name in own.auth_methods
        }
        self._auth_methods.update(theirs.auth_methods)
        for mechanism in auth_exclude_mechanism or []:
            self._auth_methods.pop(mechanism, None)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "Available AUTH mechanisms: "
                + " ".join(
                    m + "(builtin)" if impl.is_builtin else m
                    for m, impl in sorted(self._auth_methods.items())
                )
            )
        self._handle_hooks = dict(theirs.handle_hooks)
        self._ehlo_hook_ver = theirs.ehlo_hook_ver
        self._smtp_methods = {command: getattr(self, name) for command, name in own.smtp_methods}

        if command_call_limit is None:
            self._enforce_call_limit = False
        else:
            self._enforce_call_limit = True
            if isinstance(command_call_limit, int):
                self._call_limit_base = {}
                self._call_limit_default = command_call_limit
            elif isinstance(command_call_limit, dict):
                if not all(isinstance(v, int) for v in command_call_limit.values()):
                    raise TypeError("All command_call_limit values must be int")
                self._call_limit_base = command_call_limit
                self._call_limit_default = command_call_limit.get("*", CALL_LIMIT_DEFAULT)
            else:
                raise TypeError("command_call_limit must be int or Dict[str, int]")
