"""Who may use the control room: tokens, sessions, CSRF tokens, roles, and the rate limit on failed logins.

    STATE/web/tokens.json    {"USER": "TOKEN", ...}, mode 0600: one token per user of `web.users`, generated on
                             first use (`orchestrator web` or `--show-url`), kept across restarts

    STATE/web/session.key    mode 0600: the key that signs session cookies, generated on first use

A login trades a user's token for a session (a signed id in an HttpOnly, SameSite=Strict cookie) that carries
the user's role and a CSRF token derived from it; a restart of the web process logs nobody out.
Scripts may send the token itself as `Authorization: Bearer TOKEN` instead: no cookie, so no CSRF token.
Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from orchestrator.core.model import WebUser
from orchestrator.state.files import exclusive, write_atomically

DIR = "web"
TOKENS = "tokens.json"
KEY = "session.key"
SESSION_LIFETIME = 12 * 3600.0   # a working day and then some: a forgotten tab does not stay logged in for ever
MAX_FAILURES = 5                 # failed logins from one address within FAILURE_WINDOW before it must wait
FAILURE_WINDOW = 60.0


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    role: str
    csrf: str
    expires: float

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def tokens(state_dir: str, users: Iterable[WebUser]) -> dict[str, str]:
    """Each user's token, those missing generated and written (0600) first; tokens of users no longer listed stay
    in the file (a user listed again gets the same token) but open nothing."""
    directory = os.path.join(state_dir, DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, TOKENS)
    with exclusive(path + ".lock"):
        try:
            with open(path, encoding="utf-8") as handle:
                known: dict[str, str] = {str(k): str(v) for k, v in json.load(handle).items()}
        except FileNotFoundError:
            known = {}
        except ValueError:
            known = {}   # an unreadable file: every user gets a fresh token (the old ones cannot be trusted)
        wanted = {u.name for u in users}
        missing = wanted - set(known)
        for name in missing:
            known[name] = secrets.token_urlsafe(32)
        if missing or not os.path.exists(path):
            write_atomically(path, json.dumps(known, indent=2, sort_keys=True) + "\n")
        os.chmod(path, 0o600)
    return {name: known[name] for name in wanted}


def session_key(state_dir: str) -> bytes:
    """The key that signs session cookies (STATE/web/session.key, 0600), generated on first use: sessions signed with
    it stay valid across a restart of the web process (supervisord restarting it logs nobody out)."""
    directory = os.path.join(state_dir, DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, KEY)
    with exclusive(path + ".lock"):
        try:
            with open(path, "rb") as handle:
                key = handle.read()
        except FileNotFoundError:
            key = b""
        if len(key) < 32:
            key = secrets.token_bytes(32)
            write_atomically(path, key)
        os.chmod(path, 0o600)
    return key


class Sessions:
    """Sessions as signed ids (USER.EXPIRES.NONCE.SIGNATURE, HMAC-SHA256 with the session key), so they need no
    storage and survive a restart; a session's CSRF token is derived from its id with the same key. A logout
    revokes its id in this process. Thread-safe."""

    def __init__(self, users: Iterable[WebUser], tokens_by_user: Mapping[str, str], *, key: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.roles = {u.name: u.role for u in users}
        self.tokens = dict(tokens_by_user)
        self.key, self.clock = key, clock
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def user_of(self, token: str) -> str | None:
        """The user whose token this is (compared in constant time), or None."""
        found = None
        for user, known in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return found

    def _sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def _session(self, session_id: str, user: str, expires: float) -> Session:
        return Session(id=session_id, user=user, role=self.roles[user], csrf=self._sign("csrf." + session_id)[:32],
                       expires=expires)

    def open(self, user: str) -> Session:
        body = f"{user}.{int(self.clock() + SESSION_LIFETIME)}.{secrets.token_urlsafe(16)}"
        session_id = f"{body}.{self._sign(body)}"
        return self._session(session_id, user, int(self.clock() + SESSION_LIFETIME))

    def get(self, session_id: str) -> Session | None:
        """The session of a cookie's id: signed with our key, not expired, not logged out, of a user still listed."""
        body, _, signature = session_id.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or not hmac.compare_digest(self._sign(body), signature) or parts[0] not in self.roles:
            return None
        try:
            expires = float(parts[1])
        except ValueError:
            return None
        with self._lock:
            revoked = session_id in self._revoked
        return None if revoked or expires <= self.clock() else self._session(session_id, parts[0], expires)

    def bearer(self, token: str) -> Session | None:
        """A session for one request that sent its token (no cookie, no CSRF token needed: nothing ambient)."""
        user = self.user_of(token)
        return None if user is None else Session(id="", user=user, role=self.roles[user], csrf="", expires=self.clock() + 1)

    def close(self, session_id: str) -> None:
        session = self.get(session_id)
        if session is None:
            return
        with self._lock:
            now = self.clock()
            self._revoked = {k: e for k, e in self._revoked.items() if e > now}
            self._revoked[session_id] = session.expires


class LoginLimit:
    """At most MAX_FAILURES failed logins per address within FAILURE_WINDOW seconds; thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, limit: int = MAX_FAILURES,
                 window: float = FAILURE_WINDOW) -> None:
        self.clock, self.limit, self.window = clock, limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait(self, address: str) -> float:
        """Seconds `address` must wait before its next attempt (0: it may try now)."""
        with self._lock:
            failures = self._recent(address)
            return 0.0 if len(failures) < self.limit else max(0.0, failures[0] + self.window - self.clock())

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self.clock())

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque(maxlen=self.limit))
        while failures and failures[0] <= self.clock() - self.window:
            failures.popleft()
        return failures
