"""Who may use the UI and its API, against a running hub: no default credentials, the token
(configured, or generated and printed once like Jupyter's), the cookie, CSRF-safe writes,
ingest left open, the Content-Security-Policy."""

from __future__ import annotations

import base64
import contextlib
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidekick.config import ConfigError, load_config
from tests.hubproc import HubProcess, falco_alert

WRITES = [
    ("/api/v1/deadletters/redrive", {}),
    ("/api/v1/events/00000000-0000-4000-8000-000000000001/triage",
     {"status": "acknowledged", "actor": "ana"}),
    ("/api/v1/triage", {"status": "resolved", "actor": "ana",
                        "uuids": ["00000000-0000-4000-8000-000000000001"]}),
    ("/api/v1/exceptions", {"uuid": "00000000-0000-4000-8000-000000000001",
                            "fields": ["proc.name"]}),
]
READS = ["/api/v1/events", "/api/v1/stats", "/api/v1/outputs", "/api/v1/deadletters",
         "/api/v1/session", "/api/v1/events/00000000-0000-4000-8000-000000000001",
         "/api/v1/events/00000000-0000-4000-8000-000000000001/deliveries",
         "/api/v1/events/00000000-0000-4000-8000-000000000001/triage",
         "/api/v1/exceptions/preview?uuid=00000000-0000-4000-8000-000000000001&fields=proc.name"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    with HubProcess(tmp_path_factory.mktemp("access"), {}) as proc:
        assert httpx.post(f"{proc.base_url}/", json=falco_alert(1)).status_code == 200
        yield proc


def bearer(hub: HubProcess) -> dict[str, str]:
    return {"authorization": f"Bearer {hub.token}"}


@contextlib.contextmanager
def signed_in(hub: HubProcess) -> Iterator[httpx.Client]:
    """A client holding the session cookie, as a browser after opening the printed URL."""
    with httpx.Client(base_url=hub.base_url) as client:
        opened = client.get("/ui/", params={"token": hub.token})
        assert opened.status_code == 303 and opened.headers["location"] == "/ui/"
        yield client


@pytest.mark.parametrize("path", READS)
def test_reads_need_the_token(hub: HubProcess, path: str) -> None:
    anonymous = httpx.get(f"{hub.base_url}{path}")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="lanner"'
    assert "token" not in anonymous.json()["error"].lower() or hub.token not in anonymous.text
    wrong = httpx.get(f"{hub.base_url}{path}", headers={"authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401
    assert httpx.get(f"{hub.base_url}{path}", headers=bearer(hub)).status_code == 200
    basic = base64.b64encode(f"anyone:{hub.token}".encode()).decode()
    assert httpx.get(f"{hub.base_url}{path}",
                     headers={"authorization": f"Basic {basic}"}).status_code == 200


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_writes_need_the_token_and_are_csrf_safe(hub: HubProcess, path: str, body: dict) -> None:
    url = f"{hub.base_url}{path}"
    assert httpx.post(url, json=body).status_code == 401
    with signed_in(hub) as browser:
        # The cookie alone is what a forged cross-site form would carry.
        refused = browser.post(path, json=body)
        assert refused.status_code == 403 and "x-csrf-token" in refused.json()["error"]
        csrf = browser.get("/api/v1/session").json()["csrf"]
        assert browser.post(path, json=body, headers={"x-csrf-token": "0" * 64}).status_code == 403
        assert browser.post(path, json=body, headers={"x-csrf-token": csrf}).status_code == 200
        assert browser.post(path, json=body, headers={
            "x-csrf-token": csrf, "origin": "https://evil.example"}).status_code == 403
    assert httpx.post(url, json=body, headers=bearer(hub)).status_code == 200
    for header in ({"sec-fetch-site": "cross-site"}, {"origin": "https://evil.example"}):
        forged = httpx.post(url, json=body, headers={**bearer(hub), **header})
        assert forged.status_code == 403
    assert httpx.post(url, json=body, headers={
        **bearer(hub), "origin": hub.base_url, "sec-fetch-site": "same-origin"}).status_code == 200


def test_ingest_health_and_metrics_stay_open(hub: HubProcess) -> None:
    assert httpx.post(f"{hub.base_url}/", json=falco_alert(2)).status_code == 200
    assert httpx.post(f"{hub.base_url}/test").status_code == 200
    for path in ("/healthz", "/ping", "/metrics", "/openapi.json"):
        assert httpx.get(f"{hub.base_url}{path}").status_code == 200


def test_the_token_in_the_url_becomes_a_cookie_and_leaves_the_address_bar(
    hub: HubProcess,
) -> None:
    client = httpx.Client(base_url=hub.base_url)
    page = client.get("/ui/", params=[("event", "abc-123"), ("rule", 'a "b" <c>'),
                                      ("field", "k8s.ns.name:x"), ("field", "user.name:y")])
    assert page.status_code == 401
    assert '<form method="get" action="/ui/">' in page.text
    # Kept for after the sign-in, as text.
    assert '<input type="hidden" name="event" value="abc-123">' in page.text
    assert '<input type="hidden" name="rule" value="a &quot;b&quot; &lt;c&gt;">' in page.text
    assert page.text.count('name="field"') == 2
    wrong = client.get("/ui/", params={"token": "nope", "event": "abc-123"})
    assert wrong.status_code == 401 and "not right" in wrong.text and "nope" not in wrong.text
    opened = client.get("/ui/", params={"token": hub.token, "event": "abc-123"})
    assert opened.status_code == 303
    assert opened.headers["location"] == "/ui/?event=abc-123"
    cookie = opened.headers["set-cookie"]
    assert re.fullmatch(r"lanner_[0-9a-f]{12}=[0-9a-f]{64}; Path=/; Max-Age=\d+; HttpOnly; "
                        r"SameSite=Lax", cookie), cookie
    assert hub.token not in cookie
    assert client.get("/ui?event=abc-123").headers["location"] == "/ui/?event=abc-123"
    app = client.get("/ui/?event=abc-123")
    assert app.status_code == 200 and '<script type="module" src="/ui/app.js">' in app.text
    assert client.get("/api/v1/events").status_code == 200


def test_strict_content_security_policy(hub: HubProcess) -> None:
    for path in ("/ui/", "/ui/app.js", "/api/v1/events"):
        response = httpx.get(f"{hub.base_url}{path}", headers=bearer(hub))
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "require-trusted-types-for 'script'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{hub.base_url}/ui/app.js").headers["content-type"].startswith(
        "text/javascript")
    for path in ("/ui/../hubproc.py", "/ui/nope.js", "/ui/index.html",
                 "/ui/%2e%2e%2fpyproject.toml"):
        assert httpx.get(f"{hub.base_url}{path}").status_code in (401, 404)


def test_without_a_configured_token_one_is_made_kept_and_printed(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, {}, env={"LANNER_UI_TOKEN": ""})
    with hub:
        printed = re.findall(r"lanner: UI: (http://127\.0\.0\.1:\d+/ui/\?token=(\S+))", hub.log())
    [(url, token)] = printed
    kept = tmp_path / "hub-data" / "ui_token"
    assert kept.read_text().strip() == token and len(token) >= 40
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert hub.log().count(token) == 1  # only in that one line
    with hub:  # a restart keeps it
        assert httpx.get(url, follow_redirects=False).status_code == 303
        assert httpx.get(f"{hub.base_url}/api/v1/events",
                         headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert hub.log().count(token) == 2


def test_a_configured_token_is_never_printed(tmp_path: Path) -> None:
    with HubProcess(tmp_path, {}) as hub:
        httpx.get(f"{hub.base_url}/api/v1/events", headers={"authorization": "Bearer wrong"})
        assert f"lanner: UI: {hub.base_url}/ui/ (sign in with ui.token)" in hub.log()
    assert hub.token not in hub.log()
    assert not (tmp_path / "hub-data" / "ui_token").exists()


def test_token_configuration_errors_do_not_echo_it() -> None:
    with pytest.raises(ConfigError) as short:
        load_config(None, env={"LANNER_UI_TOKEN": "hunter2"})
    assert str(short.value) == ("env LANNER_UI_TOKEN: must be at least 16 printable characters "
                                "without spaces")
    with pytest.raises(ConfigError) as both:
        load_config(None, env={"LANNER_UI_TOKEN": "a" * 20, "UI_TOKEN": "b" * 20})
    assert "differ" in str(both.value) and "aaaa" not in str(both.value)
    config = load_config(None, env={"UI_TOKEN": "c" * 20})
    assert config.ui.token.get_secret_value() == "c" * 20
    assert "cccc" not in str(config.model_dump(mode="json"))
