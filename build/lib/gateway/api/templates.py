"""Merge templates for batch sends: Jinja2 in its immutable sandbox.

Templates come from API clients, so they are untrusted code. The sandbox already refuses
attribute access that reaches Python internals at render time; on top of that, any template
that names an attribute or item starting with ``_`` is refused when it is compiled, so such a
request fails as a whole with a clear problem instead of once per recipient. Missing variables
are errors (``StrictUndefined``), never silently empty.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.api.problems import Problem

_TEXT = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=True)
MAX_RENDERED = 5 * 1024 * 1024


class RenderError(Exception):
    """One recipient's variables do not fit the template; ``field`` says which template."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


class Template:
    """A compiled template for one field (``subject``, ``text`` or ``html``)."""

    def __init__(self, field: str, source: str, *, html: bool = False) -> None:
        self.field = field
        environment = _HTML if html else _TEXT
        try:
            tree = environment.parse(source)
        except TemplateSyntaxError as e:
            why = f"template error on line {e.lineno}: {e.message}"
            raise Problem.invalid(field, why) from None
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            name = node.attr if isinstance(node, nodes.Getattr) else _constant(node)
            if isinstance(name, str) and name.startswith("_"):
                raise Problem.invalid(
                    field, f"template refused: it reaches for {name!r}, which is not allowed"
                )
        self._template = environment.from_string(tree)

    def render(self, variables: dict[str, Any]) -> str:
        try:
            out = self._template.render(variables)
        except SecurityError as e:
            raise RenderError(self.field, f"template refused: {e}") from None
        except UndefinedError as e:
            raise RenderError(self.field, f"template variable missing: {e}") from None
        except Exception as e:  # a client's template may fail in any way; report, never crash
            raise RenderError(self.field, f"template failed: {type(e).__name__}: {e}") from None
        if len(out) > MAX_RENDERED:
            raise RenderError(self.field, f"rendered to more than {MAX_RENDERED} characters")
        return out


def _constant(node: nodes.Node) -> object:
    arg = getattr(node, "arg", None)
    return arg.value if isinstance(arg, nodes.Const) else None
