"""Building the plugin manager, and calling hooks correctly from asyncio.

pluggy cannot await (pytest-dev/pluggy#320): an ``async def`` implementation returns a
coroutine, which is never ``None``, so a plain *firstresult* call would stop at the first async
implementation and drop the coroutine un-awaited. The gateway therefore calls hooks only through
:func:`call_all` and :func:`call_first`, which walk the implementations in pluggy's order and
await what is awaitable.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import pluggy

from gateway import hookspecs

log = logging.getLogger("gateway.plugins")

hookimpl = pluggy.HookimplMarker("gateway")

ENTRY_POINT_GROUP = "gateway"

DEFAULT_PLUGINS: tuple[str, ...] = ()
"""Built-in plugin modules, registered in this order before third-party ones."""


class PluginError(Exception):
    """A plugin could not be loaded or registered."""


def make_plugin_manager(
    *, builtins: Iterable[str] = DEFAULT_PLUGINS, entry_points: bool = True
) -> pluggy.PluginManager:
    """A fresh manager: hookspecs, built-in plugins, then the ``gateway`` entry-point group.

    One manager per gateway, never a module global, so tests don't leak plugins into each other.
    """
    pm = pluggy.PluginManager("gateway")
    pm.add_hookspecs(hookspecs)
    for module_name in builtins:
        module = __import__(module_name, fromlist=["_"])
        pm.register(module, name=module_name.rpartition(".")[2])
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    check_plugins(pm)
    if os.environ.get("GATEWAY_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda text: log.info("hook %s", text.rstrip()))
        pm.enable_tracing()
    return pm


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


async def _resolve(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def _ordered(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    # pluggy calls the last registered (and tryfirst) implementations first.
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


async def call_first(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> Any:
    """Call a *firstresult* hook's implementations in order; return the first non-None."""
    for impl in _ordered(pm, hook_name):
        started = time.perf_counter()
        result = await _resolve(_call_impl(impl, kwargs))
        _trace(hook_name, impl, started, result)
        if result is not None:
            return result
    return None


async def call_all(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[Any]:
    """Call every implementation in order; return their non-None results."""
    results = []
    for impl in _ordered(pm, hook_name):
        started = time.perf_counter()
        result = await _resolve(_call_impl(impl, kwargs))
        _trace(hook_name, impl, started, result)
        if result is not None:
            results.append(result)
    return results


def _trace(hook_name: str, impl: pluggy.HookImpl, started: float, result: Any) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s[%s] %.3f ms -> %r",
            hook_name,
            impl.plugin_name,
            (time.perf_counter() - started) * 1000,
            result,
        )


def describe_plugins(pm: pluggy.PluginManager) -> list[tuple[str, str, list[str]]]:
    """(name, version, hooks) per plugin, in registration order, for ``gateway plugins``."""
    out = []
    dist_versions = {id(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        version = dist_versions.get(id(plugin)) or getattr(plugin, "__version__", "built-in")
        out.append((name, str(version), hooks))
    return out
