"""The async rule: sync and async implementations are awaited and ordered like pluggy's own."""

from __future__ import annotations

import pytest

from gateway.message import Skip
from gateway.plugin_manager import PluginError, call_all, call_first, hookimpl, make_plugin_manager


class SyncNoOpinion:
    @hookimpl
    def gateway_recipient_filter(self, delivery):
        return None


class AsyncSkip:
    @hookimpl
    async def gateway_recipient_filter(self, delivery):
        return Skip("suppressed")


class AsyncNoOpinion:
    @hookimpl(tryfirst=True)
    async def gateway_recipient_filter(self, delivery):
        return None


@pytest.fixture
def pm():
    return make_plugin_manager(builtins=(), entry_points=False)


async def test_call_first_awaits_async_impls_and_skips_their_none(pm) -> None:
    pm.register(AsyncSkip(), name="skip")
    pm.register(SyncNoOpinion(), name="sync")
    pm.register(AsyncNoOpinion(), name="async-none")
    result = await call_first(
        pm, "gateway_recipient_filter", gateway=None, message=None, delivery=None
    )
    assert result == Skip("suppressed")


async def test_call_first_returns_none_when_nobody_has_an_opinion(pm) -> None:
    pm.register(AsyncNoOpinion(), name="async-none")
    pm.register(SyncNoOpinion(), name="sync")
    assert (
        await call_first(pm, "gateway_recipient_filter", gateway=None, message=None, delivery=None)
        is None
    )


async def test_call_all_runs_in_pluggy_order(pm) -> None:
    calls: list[str] = []

    class First:
        @hookimpl
        def gateway_transform(self, message):
            calls.append("first")
            return b"one"

    class Second:
        @hookimpl
        async def gateway_transform(self, message):
            calls.append("second")
            return b"two"

    pm.register(First(), name="first")
    pm.register(Second(), name="second")
    results = await call_all(pm, "gateway_transform", gateway=None, message=None, delivery=None)
    # pluggy calls the most recently registered implementation first.
    assert calls == ["second", "first"]
    assert results == [b"two", b"one"]


def test_misspelled_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def gateway_recipent_filter(self, delivery):
            return None

    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(Typo(), name="typo")
    from gateway.plugin_manager import check_plugins

    with pytest.raises(PluginError, match="gateway_recipent_filter"):
        check_plugins(pm)


def test_wrappers_are_refused_on_awaited_hooks() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def gateway_transform(self, message):
            return (yield)

    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(Wrapper(), name="wrapper")
    from gateway.plugin_manager import check_plugins

    with pytest.raises(PluginError, match="cannot be a wrapper"):
        check_plugins(pm)
