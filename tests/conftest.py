from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, settings

from agentfsm.stores._postgres import redact
from tests.tcp_proxy import Proxy, proxy_to

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=200)
settings.load_profile("ci" if os.environ.get("CI") else "default")


DSN = os.environ.get("AGENTFSM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_down() -> str | None:
    """Why PostgreSQL cannot be used (None if it can), found out once per session."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(DSN, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        return f"PostgreSQL is not answering at {redact(DSN)}: {detail}"


@pytest.fixture
def schema(postgres_down: str | None) -> Iterator[str]:
    """A fresh schema name for one test; the schema is dropped after it."""
    if postgres_down is not None:
        pytest.skip(postgres_down)
    import psycopg

    name = f"agentfsm_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def proxy(postgres_down: str | None) -> Iterator[Proxy]:
    """A TCP proxy to the test server on loopback, which a test can cut or silence."""
    if postgres_down is not None:
        pytest.skip(postgres_down)
    target = urlsplit(DSN)
    with proxy_to(target.hostname or "127.0.0.1", target.port or 5432) as cuttable:
        yield cuttable


def through(proxy: Proxy) -> str:
    """The test server's DSN, through ``proxy``."""
    port = urlsplit(DSN).port or 5432
    return DSN.replace(f":{port}/", f":{proxy.port}/")
