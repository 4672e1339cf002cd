"""The web UI's pages: ``/ui/`` (the app, or the token page) and its static files from ``web/``.

No front-end build: ``web/`` holds plain ES modules and CSS, served as they are. Every UI and
API response carries a strict Content-Security-Policy: scripts only from this hub, no inline
script or style, and Trusted Types so that no script can ever hand a string to an HTML sink.
Alert strings (attacker-controlled command lines, file names) can then only ever be text.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from sidekick.auth import Access

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
))
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_GUARDED = ("/ui", "/api/")
_STATIC = re.compile(r"[a-z0-9_-]+\.(js|css|svg|png|ico)")
_MEDIA = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml",
          "png": "image/png", "ico": "image/x-icon"}
# Query parameters the login page carries over to the app (an event link, a shared view).
_KEPT = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


class SecurityHeaders:
    """Pure ASGI: adds the headers to every UI and API response (cheaper than a middleware
    stack on the API's hot paths)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_GUARDED):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _login_page(request: Request, message: str) -> Response:
    """The page asking for the token; a plain form, so it works before any script."""
    kept = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in request.query_params.multi_items()
        if k != "token" and re.fullmatch(r"[a-z]{1,16}", k) and _KEPT.fullmatch(v)
    )
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lanner: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/ui/style.css"></head>
<body class="login"><main class="login-box">
<h1>Lanner</h1>
<p class="login-message">{html.escape(message)}</p>
<form method="get" action="/ui/">{kept}
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Open</button>
</form>
<p class="hint">The hub prints a ready-to-open URL with its token when it starts. The token is
<code>ui.token</code> in its configuration, env <code>LANNER_UI_TOKEN</code>, or the file
<code>ui_token</code> in its data dir.</p>
</main></body></html>"""
    return Response(body, status_code=401, media_type="text/html; charset=utf-8",
                    headers={"cache-control": "no-store"})


def add_ui_routes(app: FastAPI, access: Access, web_dir: Path = WEB_DIR) -> None:
    @app.get("/ui", include_in_schema=False)
    async def ui_root(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse("/ui/" + (f"?{query}" if query else ""), status_code=308)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index(request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            if not access.token_matches(token):
                return _login_page(request, "That token is not right.")
            # The token leaves the address bar (and the history) at once; the cookie stays.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = "/ui/" + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.headers["set-cookie"] = access.set_cookie_header()
            response.headers["cache-control"] = "no-store"
            return response
        if access.credential(request) is None:
            return _login_page(request, "Sign in with the hub's access token.")
        index = web_dir / "index.html"
        if not index.is_file():
            return Response(f"the UI files are missing ({web_dir})", status_code=503,
                            media_type="text/plain")
        return FileResponse(index, media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-store"})

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_static(name: str) -> Response:
        # Code and styles only, no data: served without the token (the login page needs them).
        match = _STATIC.fullmatch(name)
        path = web_dir / name
        if match is None or not path.is_file():
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type=_MEDIA[match[1]],
                            headers={"cache-control": "no-cache"})
