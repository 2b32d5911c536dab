"""HTML that escapes by default.

``Markup`` is text known to be HTML; everything else is escaped when it meets markup. Pages are
built only with ``html(template, *values)``, which escapes each value that is not Markup, and
``join``: so text from a model, a tool or a request (a ``<script>`` in an argument) is shown
as text, and forgetting to escape takes a deliberate ``Markup(...)``.
"""

from __future__ import annotations

import html as _stdlib_html
from collections.abc import Iterable
from typing import Any

__all__ = ["Markup", "escape", "html", "join"]


class Markup(str):
    """Text that is already HTML."""

    __slots__ = ()


def escape(value: Any) -> Markup:
    """``value`` as HTML: Markup as it is, anything else as escaped text (quotes too, so
    the result is safe inside attribute values)."""
    if isinstance(value, Markup):
        return value
    return Markup(_stdlib_html.escape(str(value), quote=True))


def html(template: str, *values: Any, **named: Any) -> Markup:
    """``template`` (trusted HTML, with ``{}`` or ``{name}`` fields) with its fields filled
    by escaped ``values``."""
    return Markup(
        template.format(*(escape(v) for v in values), **{k: escape(v) for k, v in named.items()})
    )


def join(parts: Iterable[Any], separator: str = "") -> Markup:
    """``parts`` escaped (unless Markup) and joined."""
    return Markup(separator.join(escape(p) for p in parts))
