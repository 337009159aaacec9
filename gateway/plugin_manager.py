"""Building the plugin manager, and calling hooks correctly from asyncio.

pluggy cannot await (pytest-dev/pluggy#320): an ``async def`` implementation returns a
coroutine, which is never ``None``, so a plain *firstresult* call would stop at the first async
implementation and drop the coroutine un-awaited. The gateway therefore calls hooks only through
:func:`call_all` and :func:`call_first`, which walk the implementations in pluggy's order and
await what is awaitable.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import pluggy

from gateway import hookspecs

log = logging.getLogger("gateway.plugins")

hookimpl = pluggy.HookimplMarker("gateway")

ENTRY_POINT_GROUP = "gateway"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "gateway_plugins.suppression",
    "gateway_plugins.click_tracking",
    "gateway_plugins.open_pixel",
    "gateway_plugins.list_unsubscribe",
    "gateway_plugins.rate_limit",
    "gateway_plugins.warming",
    "gateway_plugins.dkim",
    "gateway_plugins.domain_verification",
    "gateway_plugins.audience",
    "gateway_plugins.campaigns",
    "gateway_plugins.automation",
)
"""Built-in plugin modules in call order. (pluggy calls the latest registration first, so they
are registered in reverse; third-party plugins, registered after them, run before them unless
they mark their implementations ``trylast``.)"""


class PluginError(Exception):
    """A plugin could not be loaded or registered."""


class HookError(Exception):
    """A plugin's hook implementation raised; names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, error: BaseException) -> None:
        super().__init__(f"plugin {plugin!r} failed in {hook}: {error!r}")
        self.plugin = plugin
        self.hook = hook
        self.error = error


def make_plugin_manager(
    *,
    builtins: Iterable[str] = DEFAULT_PLUGINS,
    entry_points: bool = True,
    extra: Iterable[str] = (),
    tables: dict[str, dict[str, Any]] | None = None,
) -> pluggy.PluginManager:
    """A fresh manager: hookspecs, built-in plugins, the ``gateway`` entry-point group, then
    ``extra`` modules named by import path.

    A plugin is registered unless its ``[plugins.<name>]`` table says ``enabled = false``; a
    built-in whose module sets ``DEFAULT_ENABLED = False`` needs ``enabled = true`` (or any
    table at all). One manager per gateway, never a module global, so tests don't leak plugins.
    """
    tables = tables or {}
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)

    def wanted(name: str, default: bool) -> bool:
        table = tables.get(name)
        if table is None:
            return default
        return bool(table.get("enabled", True))

    for module_name in reversed(tuple(builtins)):
        name = module_name.rpartition(".")[2]
        module = _import(module_name)
        if wanted(name, getattr(module, "DEFAULT_ENABLED", True)):
            pm.register(module, name=name)
        else:
            pm.set_blocked(name)
    if entry_points:
        for name in tables:
            if not wanted(name, True) and pm.get_plugin(name) is None:
                pm.set_blocked(name)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for module_name in extra:
        name = module_name.rpartition(".")[2]
        if wanted(name, True) and pm.get_plugin(name) is None:
            pm.register(_import(module_name), name=name)
    check_plugins(pm)
    if os.environ.get("GATEWAY_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: log.info("hook %s", text.rstrip()))
        pm.enable_tracing()
    return pm


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"cannot import plugin module {module_name!r}: {e}") from None


def check_plugins(pm: pluggy.PluginManager) -> None:
    """Fail loudly on a misspelled hook or a wrapper on an awaited hook."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(str(e)) from None
    for hook_name in dir(hookspecs):
        if not hook_name.startswith("gateway_"):
            continue
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {hook_name} cannot be a wrapper; the gateway "
                    "awaits async implementations itself, which wrappers would not see"
                )


def _call_impl(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    return impl.function(*(kwargs[name] for name in impl.argnames))


async def _run(impl: pluggy.HookImpl, hook_name: str, kwargs: dict[str, Any]) -> Any:
    # Run for every plugin on every message: the clock and the awaitable check only when
    # they can matter.
    tracing = log.isEnabledFor(logging.DEBUG)
    started = time.perf_counter() if tracing else 0.0
    try:
        result = _call_impl(impl, kwargs)
        if result is not None and inspect.isawaitable(result):
            result = await result
    except Exception as e:
        raise HookError(impl.plugin_name, hook_name, e) from e
    if tracing:
        _trace(hook_name, impl, started, result)
    return result


def has_impls(pm: pluggy.PluginManager, hook_name: str) -> bool:
    return bool(getattr(pm.hook, hook_name).get_hookimpls())


def _ordered(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    # pluggy calls the last registered (and tryfirst) implementations first.
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


async def call_first(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> Any:
    """Call a *firstresult* hook's implementations in order; return the first non-None.

    An implementation that raises surfaces as :class:`HookError` naming the plugin.
    """
    for impl in _ordered(pm, hook_name):
        result = await _run(impl, hook_name, kwargs)
        if result is not None:
            return result
    return None


async def call_chain(pm: pluggy.PluginManager, hook_name: str, message: Any, **kwargs: Any) -> Any:
    """Call every implementation in order, each seeing ``message`` with the ``raw`` bytes the
    previous one returned (``None`` leaves them unchanged); return the final message."""
    for impl in _ordered(pm, hook_name):
        result = await _run(impl, hook_name, {**kwargs, "message": message})
        if result is not None:
            message = msgspec.structs.replace(message, raw=result)
    return message


async def call_all(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[Any]:
    """Call every implementation in order; return their non-None results.

    An implementation that raises surfaces as :class:`HookError` naming the plugin.
    """
    results = []
    for impl in _ordered(pm, hook_name):
        result = await _run(impl, hook_name, kwargs)
        if result is not None:
            results.append(result)
    return results


def _trace(hook_name: str, impl: pluggy.HookImpl, started: float, result: Any) -> None:
    log.debug(
        "%s[%s] %.3f ms -> %r",
        hook_name,
        impl.plugin_name,
        (time.perf_counter() - started) * 1000,
        result,
    )


def describe_plugins(pm: pluggy.PluginManager) -> list[tuple[str, str, list[str]]]:
    """(name, version, hooks) per plugin in call order (first called first), for
    ``gateway plugins``."""
    versions = {id(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in reversed(pm.list_name_plugin()):
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        version = versions.get(id(plugin)) or getattr(plugin, "__version__", "built-in")
        out.append((name, str(version), hooks))
    return out


def configure_plugins(pm: pluggy.PluginManager, gateway: Any, config: Any) -> None:
    """Run ``gateway_configure`` (synchronously; an async implementation is an error)."""
    for impl in _ordered(pm, "gateway_configure"):
        result = _call_impl(impl, {"gateway": gateway, "config": config})
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise PluginError(f"plugin {impl.plugin_name!r}: gateway_configure must not be async")
