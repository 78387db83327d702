"""A personal access token keeps working after its access token expires (real Label Studio).

Label Studio exchanges a personal access token (a refresh JWT) for access tokens
that expire after minutes. The expiry is made real in the test: the cached access
token is replaced by one with the same claims whose ``exp`` has passed, signed with
the server's own key (read from its data folder), so Label Studio answers 401
exactly as it does for a token that aged out.
"""

from __future__ import annotations

import time

import jwt
import pytest
import requests

from labeler.dev.demo import template, upload_images
from labeler.media.fetching import Fetcher, FetchPolicy
from labeler.studio.client import Connection, Studio
from labeler.studio.tasks import iter_tasks

pytestmark = pytest.mark.integration


def secret_key(tmp_path_factory) -> str:
    for env in tmp_path_factory.getbasetemp().glob("ls-data*/.env"):
        for line in env.read_text().splitlines():
            if line.startswith("SECRET_KEY="):
                return line.split("=", 1)[1].strip()
    pytest.skip("cannot find the Label Studio data folder's SECRET_KEY")


def test_downloads_survive_an_expired_access_token(label_studio, image_dir, tmp_path_factory):
    url, legacy = label_studio
    headers = {"Authorization": f"Token {legacy}"}
    r = requests.post(f"{url}/api/jwt/settings", headers=headers,
                      json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True})
    assert r.status_code in (200, 201), r.text
    r = requests.post(f"{url}/api/token/", headers=headers)
    if r.status_code != 201:
        pytest.skip(f"this user already has a personal access token ({r.status_code})")
    pat = r.json()["token"]

    ls = Studio(url, legacy)
    proj = ls.projects.create(title="token-expiry", label_config=template("binary"))
    upload_images(url, legacy, proj.id, sorted(image_dir.iterdir())[:1])
    ref = ls.tasks.list(project=proj.id).items[0].data["image"]
    studio = Studio(url, pat)
    conn = studio.conn
    fetch = Fetcher(FetchPolicy(), conn)
    first = fetch.get(ref)
    assert first[:4] == b"\x89PNG"

    access = conn.auth_headers()["Authorization"].split(" ", 1)[1]
    claims = jwt.decode(access, options={"verify_signature": False})
    claims.update(exp=int(time.time()) - 60, iat=int(time.time()) - 360)
    expired = jwt.encode(claims, secret_key(tmp_path_factory), algorithm="HS256")
    assert requests.get(url + ref, headers={"Authorization": f"Bearer {expired}"}).status_code == 401
    conn._header, conn._expires = {"Authorization": f"Bearer {expired}"}, time.time() + 3600  # cached, now stale

    assert fetch.get(ref) == first  # 401 -> refreshed once -> downloaded
    assert conn.auth_headers()["Authorization"] != f"Bearer {expired}"

    # Label Studio calls through the client (Studio.request) recover the same way.
    conn._header, conn._expires = {"Authorization": f"Bearer {expired}"}, time.time() + 3600
    assert [t["id"] for t in iter_tasks(studio, proj.id)] == [t.id for t in ls.tasks.list(project=proj.id)]
    assert conn.auth_headers()["Authorization"] != f"Bearer {expired}"


def test_access_token_is_refreshed_before_it_expires(monkeypatch):
    conn = Connection("http://ls.invalid", "a.b.c")
    calls = []

    def refresh():
        calls.append(1)
        return {"Authorization": f"Bearer t{len(calls)}"}, time.time() + (0 if len(calls) == 1 else 300)
    monkeypatch.setattr(conn, "_refresh", refresh)
    assert conn.auth_headers() == {"Authorization": "Bearer t1"}
    time.sleep(0.01)
    assert conn.auth_headers() == {"Authorization": "Bearer t2"}  # t1 was at its refresh point
    assert conn.auth_headers() == {"Authorization": "Bearer t2"} and len(calls) == 2
