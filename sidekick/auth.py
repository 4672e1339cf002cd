"""Who may use the UI and its API: one shared token, never a default one.

The token comes from ``ui.token`` (or env ``LANNER_UI_TOKEN``); without one, the hub makes one
at first start and keeps it in the data dir, and prints the URL that carries it, as Jupyter
does. A request proves it knows the token with ``Authorization: Bearer <token>`` (or Basic
with the token as password, for ``curl -u :TOKEN``), or with the session cookie the UI gets by
opening ``/ui/?token=...`` once.

Writes must also be safe from cross-site request forgery: a browser attaches the cookie (and
Basic credentials it remembers) to requests any site makes, so a write is refused when the
browser says it comes from another site, and a cookie-authenticated write must carry the CSRF
token, which only a page of this hub can read (``GET /api/v1/session``).

Alert ingest (``POST /``, ``/test``, gRPC) does not use this token: a stock Falco posts there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request

TOKEN_FILE = "ui_token"
CSRF_HEADER = "x-csrf-token"
COOKIE_MAX_AGE_S = 30 * 86400
_GENERATED_BYTES = 32


class AccessDenied(Exception):
    """401 (no or wrong credentials) or 403 (a write that is not CSRF-safe)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class TokenFileError(Exception):
    """The data dir's token file cannot be read or made; the message names the file."""


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def load_or_make_token(datadir: Path) -> tuple[str, bool]:
    """The token kept in ``datadir``, made (readable by this user only) if there is none.
    Returns it and whether it was made now."""
    path = datadir / TOKEN_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: cannot read the UI token: {exc}") from None
    if text:
        return text, False
    token = secrets.token_urlsafe(_GENERATED_BYTES)
    try:
        datadir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two replicas starting at once on one data dir must not each keep their own.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_make_token(datadir)
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot write the UI token: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token, True


@dataclass(frozen=True, slots=True)
class Credential:
    kind: str  # "header" (Bearer or Basic) or "cookie"


class Access:
    """Checks requests against the token. The cookie holds a value derived from the token, not
    the token itself, and its name too, so hubs on one host (cookies ignore ports) with
    different tokens do not overwrite each other's."""

    def __init__(self, token: str, public_url: str = "") -> None:
        self._token = token
        self.session = _derive(token, "lanner ui session")
        self.csrf = _derive(token, "lanner ui csrf")
        self.cookie_name = "lanner_" + _derive(token, "lanner ui cookie name")[:12]
        self._public_host = urlsplit(public_url).netloc.lower() if public_url else ""
        self.secure_cookie = public_url.startswith("https://")

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def credential(self, request: Request) -> Credential | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return Credential("header") if self.token_matches(value.strip()) else None
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            password = decoded.partition(":")[2]
            return Credential("header") if self.token_matches(password) else None
        if header:
            return None
        cookie = request.cookies.get(self.cookie_name, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session.encode()):
            return Credential("cookie")
        return None

    def require_reader(self, request: Request) -> Credential:
        found = self.credential(request)
        if found is None:
            raise AccessDenied(
                401, "authentication required: Authorization: Bearer <token>, or open the UI"
            )
        return found

    def require_writer(self, request: Request) -> Credential:
        found = self.require_reader(request)
        # Browsers say where a request comes from; other clients send neither header.
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise AccessDenied(403, f"refused: a {site} request may not write")
        origin = request.headers.get("origin")
        if origin is not None and not self._same_origin(origin, request):
            raise AccessDenied(403, "refused: the request comes from another origin")
        if found.kind == "cookie":
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
                raise AccessDenied(403, f"refused: missing or wrong {CSRF_HEADER} header")
        return found

    def _same_origin(self, origin: str, request: Request) -> bool:
        host = urlsplit(origin).netloc.lower()
        if not host:
            return False
        own = request.headers.get("host", "").lower()
        return host in (own, self._public_host)

    def set_cookie_header(self) -> str:
        parts = [
            f"{self.cookie_name}={self.session}",
            "Path=/",
            f"Max-Age={COOKIE_MAX_AGE_S}",
            "HttpOnly",
            # Lax, not Strict: a link to an event in a Slack message is a cross-site
            # navigation, and must open the event, not the login page. Writes never rely on
            # the cookie alone (CSRF header).
            "SameSite=Lax",
        ]
        if self.secure_cookie:
            parts.append("Secure")
        return "; ".join(parts)
