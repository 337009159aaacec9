"""Compiling and rendering one untrusted template, inside a render worker process.

Jinja2's immutable sandbox refuses Python internals at render time; on top of it, a template
that names an attribute or item starting with ``_`` is refused at compile time, so a request
fails as a whole with a clear problem instead of once per recipient. Missing variables are
errors (``StrictUndefined``). Sequence repetition (``'a' * n``) and powers are checked before
they are computed, so a template cannot allocate a result it could never output; everything
else is bounded by the worker's CPU timer and address-space limit (``worker.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.templates.limits import LimitName, TemplateError


class LimitBreach(BaseException):
    """A render broke ``limit``. A ``BaseException``, so no ``except Exception`` on the way
    (Jinja2's or a filter's) can swallow it."""

    def __init__(self, limit: LimitName) -> None:
        super().__init__(limit)
        self.limit: LimitName = limit


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` checked against the output limit first."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *, html: bool, max_output: int) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=html)
        self.max_output = max_output

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | bytes | list | tuple) and _is_int(times):
                    if len(sequence) * times > self.max_output:
                        raise LimitBreach("output_size")
        elif _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            # A number of b bits prints as ~0.3 b digits: more bits than 8 per allowed
            # character can never be output.
            if left.bit_length() * right > 8 * self.max_output:
                raise LimitBreach("output_size")
        return super().call_binop(context, operator, left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def compile_template(environment: LimitedEnvironment, field: str, source: str) -> Template:
    """``source`` compiled, or a ``compile`` ``TemplateError`` saying why not."""
    try:
        tree = environment.parse(source)
    except TemplateSyntaxError as e:
        raise TemplateError(
            "compile", field, f"template error on line {e.lineno}: {e.message}"
        ) from None
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else _constant(node)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateError(
                "compile", field, f"template refused: it reaches for {name!r}, which is not allowed"
            )
    return environment.from_string(tree)


def render(template: Template, field: str, variables: dict[str, Any], max_output: int) -> str:
    """``template`` with ``variables``; stops as soon as the output passes ``max_output``.
    Raises ``TemplateError`` (``render``) for the client's mistakes and lets ``LimitBreach``
    through."""
    try:
        return _join_bounded(template.generate(variables), max_output)
    except SecurityError as e:
        raise TemplateError("render", field, f"template refused: {e}") from None
    except UndefinedError as e:
        raise TemplateError("render", field, f"template variable missing: {e}") from None
    except (LimitBreach, MemoryError):
        raise
    except Exception as e:  # a client's template may fail in any way; report, never crash
        raise TemplateError("render", field, f"template failed: {type(e).__name__}: {e}") from None


def _join_bounded(chunks: Iterator[str], max_output: int) -> str:
    parts = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_output:
            raise LimitBreach("output_size")
        parts.append(chunk)
    return "".join(parts)


def _constant(node: nodes.Node) -> object:
    arg = getattr(node, "arg", None)
    return arg.value if isinstance(arg, nodes.Const) else None
