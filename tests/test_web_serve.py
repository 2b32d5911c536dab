"""``agentfsm serve`` refuses to start without what keeps the inbox safe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the inbox needs the web extra")

ROOT = Path(__file__).resolve().parent.parent


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTFSM_TOKENS",)}
    return subprocess.run(
        [sys.executable, "-m", "agentfsm", "serve", "--store", str(tmp_path / "r.db"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_needs_tokens(tmp_path: Path) -> None:
    done = serve(tmp_path, "--port", "0")
    assert done.returncode == 1
    assert "needs tokens: pass --tokens FILE or set $AGENTFSM_TOKENS" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_short_tokens_and_bad_permissions(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ada 1234\n")
    done = serve(tmp_path, "--port", "0", "--tokens", str(tokens))
    assert done.returncode == 1 and "at least 16 characters" in done.stderr
    tokens.write_text("ada 0123456789abcdef0123\n")
    permissions = tmp_path / "permissions.json"
    permissions.write_text('{"refund": "ada"}')
    done = serve(tmp_path, "--tokens", str(tokens), "--permissions", str(permissions))
    assert done.returncode == 1 and "cannot read the permissions file" in done.stderr
