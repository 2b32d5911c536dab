"""PostgresStore (being written)."""

from __future__ import annotations

from typing import Any

from .._errors import ConfigurationError

__all__ = ["PostgresStore"]


class PostgresStore:
    def __init__(self, dsn: str, **options: Any) -> None:
        raise ConfigurationError("PostgresStore is not available yet")
