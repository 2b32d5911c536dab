"""Who is asking, and what they may decide.

* **Authentication** is a function of the request that returns an identity (a non-empty
  str) or None: ``TokenAuth`` reads ``Authorization: Bearer TOKEN`` and looks the token up
  in a table of token -> identity (``load_tokens`` reads one from a file or an environment
  variable); any other function fits the same slot (a header set by a reverse proxy that
  did single sign-on, the host application's own sessions).
* **Browser sessions**: a person logs in once with a token on the login page, and gets a
  signed session cookie (HMAC-SHA256 over the identity, an expiry and a random nonce;
  HttpOnly, SameSite=Strict, Secure over HTTPS). The cookie holds no token.
* **CSRF**: every form post carries a synchronizer token derived from the session's nonce
  (an HMAC with the app's secret), checked with ``hmac.compare_digest``.
* **Permissions** say who may decide on which tool's calls, and whether the person who
  started a run may approve its calls.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import HTTPConnection

from .._errors import ConfigurationError
from .._outcomes import ApprovalRequest
from .._state import RunState

__all__ = [
    "Authenticate",
    "Permissions",
    "Session",
    "Sessions",
    "TokenAuth",
    "load_tokens",
]

#: Returns the identity of the person or program behind a request, or None.
Authenticate = Callable[[HTTPConnection], "str | Awaitable[str | None] | None"]

#: The shortest token ``TokenAuth`` accepts: guessable tokens are a configuration error.
MIN_TOKEN_LENGTH = 16


class TokenAuth:
    """Bearer tokens: ``tokens`` maps each token to the identity it stands for. Tokens are
    kept only as SHA-256 digests, and compared in constant time."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ConfigurationError("TokenAuth needs at least one token")
        self._identities: dict[bytes, str] = {}
        for token, identity in tokens.items():
            if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
                raise ConfigurationError(
                    f"a token must be at least {MIN_TOKEN_LENGTH} characters long (identity "
                    f"{identity!r} has a shorter one); make one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
            if not isinstance(identity, str) or not identity.strip():
                raise ConfigurationError("every token needs a non-empty identity")
            self._identities[_digest(token)] = identity

    def identity(self, token: str) -> str | None:
        """The identity ``token`` stands for, or None. The lookup is by the token's digest,
        which a caller cannot steer byte by byte, so its timing tells nothing of the tokens."""
        return self._identities.get(_digest(token))

    def __call__(self, request: HTTPConnection) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.identity(token.strip())


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def load_tokens(source: str | Path | None = None, *, env: str = "AGENTFSM_TOKENS") -> TokenAuth:
    """Tokens from the file ``source``, or else from the environment variable ``env``.

    Each line (in the variable, lines or commas separate entries) is ``IDENTITY TOKEN``;
    blank lines and lines starting with ``#`` are skipped. Raises ConfigurationError when
    neither is given, a line is malformed, a token is short or listed twice."""
    if source is not None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(
                f"cannot read the tokens file {str(source)!r}: {exc}"
            ) from None
        where = f"the tokens file {str(source)!r}"
    elif os.environ.get(env):
        text = os.environ[env].replace(",", "\n")
        where = f"${env}"
    else:
        raise ConfigurationError(
            f"the inbox needs tokens: pass --tokens FILE or set ${env} (lines of IDENTITY TOKEN)"
        )
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2:
            raise ConfigurationError(f"{where}, line {number}: expected IDENTITY TOKEN")
        identity, token = words
        if token in tokens:
            raise ConfigurationError(f"{where}, line {number}: this token is listed twice")
        tokens[token] = identity
    if not tokens:
        raise ConfigurationError(f"{where} lists no tokens")
    return TokenAuth(tokens)


async def authenticate(hook: Authenticate, request: HTTPConnection) -> str | None:
    """Call ``hook`` (sync or async); a result that is not a non-empty str is None."""
    identity = hook(request)
    if inspect.isawaitable(identity):
        identity = await identity
    return identity if isinstance(identity, str) and identity else None


class Session(msgspec.Struct, frozen=True):
    """A browser's login: who, until when (seconds since the epoch), and a random nonce
    that ties the CSRF token to this login."""

    identity: str
    expires: float
    nonce: str


class Sessions:
    """Signs and reads session cookies, and derives their CSRF tokens.

    ``secret`` signs them (default: a random one, so that sessions end when the process
    does; give the same secret to every process behind one address)."""

    COOKIE = "agentfsm_session"

    def __init__(self, secret: bytes | str | None = None, *, seconds: float = 8 * 3600) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(key) < 16:
            raise ConfigurationError("the session secret must be at least 16 bytes")
        if not seconds > 0:
            raise ConfigurationError("sessions must last a positive number of seconds")
        self._key = key
        self.seconds = seconds

    def new(self, identity: str, now: float | None = None) -> tuple[Session, str]:
        """A session for ``identity``, and its cookie value."""
        now = time.time() if now is None else now
        session = Session(
            identity=identity, expires=now + self.seconds, nonce=secrets.token_hex(16)
        )
        payload = base64.urlsafe_b64encode(msgspec.json.encode(session)).decode().rstrip("=")
        return session, f"{payload}.{self._sign('session', payload)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session in ``cookie`` if its signature is ours and it has not expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign("session", payload)):
            return None
        try:
            data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            session = msgspec.json.decode(data, type=Session)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            return None
        now = time.time() if now is None else now
        return session if session.expires > now and session.identity else None

    def csrf(self, session: Session) -> str:
        """The CSRF token of ``session``'s forms."""
        return self._sign("csrf", session.nonce)

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf(session))

    def _sign(self, purpose: str, text: str) -> str:
        mac = hmac.new(self._key, f"{purpose}:{text}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


#: Who may decide on a call: a function of the identity and the call.
Allow = Callable[[str, ApprovalRequest], bool]


class Permissions:
    """Who may decide on which tool's calls.

    ``rules`` maps a tool's name to the identities that may decide on its calls; the key
    ``"*"`` covers the tools not named. A tool with no rule (and no ``"*"``) may be decided
    by any authenticated identity. ``allow``, a function ``(identity, request) -> bool``, may
    refuse more: it is asked after the rules.

    ``starter_may_approve=False``: the person who started a run may not approve its calls
    (they may still reject them). Runs the inbox starts record it, so that the store refuses
    such an approval whichever way it is posted (``new_run(starter_may_approve=...)``); for
    runs started elsewhere that name who started them, the inbox refuses it too."""

    def __init__(
        self,
        rules: Mapping[str, Iterable[str]] | None = None,
        *,
        allow: Allow | None = None,
        starter_may_approve: bool = True,
    ) -> None:
        if not isinstance(starter_may_approve, bool):
            raise ConfigurationError("starter_may_approve must be True or False")
        self.starter_may_approve = starter_may_approve
        self._rules: dict[str, frozenset[str]] = {}
        for tool, identities in (rules or {}).items():
            if isinstance(identities, str):
                raise ConfigurationError(
                    f"the permissions of {tool!r} must be a list of identities, not a string"
                )
            self._rules[tool] = frozenset(identities)
        self._allow = allow

    @classmethod
    def from_file(cls, path: str | Path, *, starter_may_approve: bool = True) -> Permissions:
        """Rules from a JSON file: an object of tool name -> list of identities."""
        try:
            rules = msgspec.json.decode(Path(path).read_bytes(), type=dict[str, list[str]])
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ConfigurationError(
                f"cannot read the permissions file {str(path)!r}: {exc}"
            ) from None
        return cls(rules, starter_may_approve=starter_may_approve)

    def may_decide(self, identity: str, request: ApprovalRequest) -> bool:
        allowed = self._rules.get(request.tool, self._rules.get("*"))
        if allowed is not None and identity not in allowed:
            return False
        return self._allow is None or bool(self._allow(identity, request))

    def may_approve(self, identity: str, state: RunState) -> bool:
        """Whether ``identity`` may approve the calls of the run ``state`` as far as the
        starter rule goes (its own, or the run's): not if they started it."""
        starter = state.started_by
        if not starter or identity != starter:
            return True
        return self.starter_may_approve and state.starter_may_approve


def as_permissions(value: Permissions | Mapping[str, Iterable[str]] | Allow | None) -> Permissions:
    if value is None:
        return Permissions()
    if isinstance(value, Permissions):
        return value
    if isinstance(value, Mapping):
        return Permissions(value)
    if callable(value):
        return Permissions(allow=value)
    raise ConfigurationError(
        f"permissions must be Permissions, a mapping or a function, not {value!r}"
    )


def as_authenticate(value: Any) -> Authenticate:
    if isinstance(value, Mapping):
        return TokenAuth(value)
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise ConfigurationError(
        "auth must be a TokenAuth, a mapping of token -> identity, or a function of the "
        f"request returning an identity, not {type(value).__name__}"
    )
