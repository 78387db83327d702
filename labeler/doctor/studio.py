"""Checks of Label Studio as labeler uses it: reachable, the token, and per project the label config,
the ML backend connection and its webhook; the import flag.

Nothing here fetches a URL that Label Studio hands over unless the caller says ``probe`` (the CLI: the
operator's own action). Whether Label Studio reaches a backend is Label Studio's own answer: listing a
project's ML backends makes it health-check each one (``state``: ``CO`` connected, ``DI``, ``ER``).
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

import requests

from labeler.doctor.result import Check, failed, passed, warned
from labeler.errors import LabelConfigError, StudioError
from labeler.studio.client import Studio
from labeler.studio.flags import FAST_IMPORT_FLAG
from labeler.studio.tasks import WEBHOOK_SECRET_HEADER, project_config, same_backend_url

TIMEOUT_S = 10.0
UNREACHABLE_STATES = {"DI", "ER"}  # Label Studio's ML backend states: disconnected, error
CONFIG_FIX = ('in Label Studio, project {p} -> Settings -> Labeling Interface: an <Image value="$image"/> and a '
              "<Choices toName=...> of that image with two <Choice> or more (templates/binary.xml is one)")
REACH_FIX = ("give Label Studio a URL of the backend that it can reach from its own host (in Docker the service "
             "name, not 127.0.0.1), with the backend running and basic auth matching BASIC_AUTH_USER/PASS; then "
             "project {p} -> Settings -> Model -> edit -> Validate and Save")
WEBHOOK_FIX = ("the backend adds its credentials to the webhook of the ML backend at the URL Label Studio calls it "
               "by: set LABELER_PUBLIC_URL={url} on the backend and restart it, then open project {p} -> Settings "
               "-> Model in Label Studio (it calls /setup); or add the header " + WEBHOOK_SECRET_HEADER +
               " yourself in project {p} -> Settings -> Webhooks")


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def studio_version(url: str | None) -> Check:
    """Label Studio answers ``GET /api/version`` (no token needed)."""
    name = "label studio"
    if not url:
        return failed(name, "LABEL_STUDIO_URL is not set", "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or "
                      "run from the folder holding labeler-demo/, or source labeler-demo/labeler.env)")
    try:
        resp = requests.get(f"{url.rstrip('/')}/api/version", timeout=TIMEOUT_S, allow_redirects=False)
        release = resp.json().get("release") if resp.ok else None
    except (requests.RequestException, ValueError, AttributeError) as exc:
        return failed(name, f"cannot reach Label Studio at {url}: {_short(exc)}",
                      "start Label Studio, or set LABEL_STUDIO_URL to the address it answers on from here")
    if not release:
        return failed(name, f"{url}/api/version answered HTTP {resp.status_code}, not Label Studio's version",
                      "set LABEL_STUDIO_URL to Label Studio's base URL (what its login page is under)")
    return passed(name, f"Label Studio {release} at {url}")


def token_kind(studio: Studio) -> str:
    return "personal access token" if studio.conn.is_jwt() else "legacy token"


def studio_token(studio: Studio | None) -> Check:
    """The token reads the current user (a personal access token is exchanged for an access token first);
    ``None``: no token set."""
    if studio is None:
        return failed("token", "LABEL_STUDIO_API_KEY is not set", "set LABEL_STUDIO_API_KEY to a personal access "
                      "token (Label Studio -> Account & Settings -> Personal Access Token)")
    name, kind = "token", token_kind(studio)
    try:
        resp = studio.request("GET", "api/current-user/whoami", timeout=TIMEOUT_S)
    except StudioError as exc:
        return failed(name, str(exc), "fix the Label Studio check first")
    if resp.status_code == 200:
        who = resp.json().get("email") or resp.json().get("username") or "a user"
        return passed(name, f"{kind} of {who}")
    if kind == "legacy token":
        fix = ("set LABEL_STUDIO_API_KEY to a valid token: a personal access token from Label Studio's Account & "
               "Settings, or the legacy token shown there (legacy tokens must be on: Organization -> API Tokens "
               "Settings)")
    else:
        fix = ("set LABEL_STUDIO_API_KEY to a valid personal access token (Account & Settings -> Personal Access "
               "Token; a revoked or expired one, or one from another Label Studio, is refused)")
    return failed(name, f"Label Studio refused the {kind} (HTTP {resp.status_code})", fix)


def label_config(studio: Studio, project: int) -> Check:
    """The project's labelling config has the ``<Image>`` + ``<Choices>`` pair labeler classifies."""
    name = f"project {project} label config"
    try:
        config = project_config(studio, project)
    except LabelConfigError as exc:
        return failed(name, str(exc), CONFIG_FIX.format(p=project))
    except Exception as exc:  # noqa: BLE001 - the SDK raises ApiError and httpx errors
        return failed(name, f"cannot read project {project}: {_short(exc)}",
                      "check the project id (--project / LABELER_PROJECT) and that the token's user is a member")
    kind = "multi-label" if config.multiple else "single-label"
    return passed(name, f"{len(config.classes)} classes, {kind} ({', '.join(config.classes[:6])}"
                        f"{', ...' if len(config.classes) > 6 else ''}), image from ${config.value_key}")


def ml_backends(studio: Studio, project: int) -> list[dict[str, Any]]:
    """The project's ML backends; listing them makes Label Studio health-check each (``state``)."""
    resp = studio.request("GET", "api/ml", params={"project": project}, timeout=TIMEOUT_S * 3)
    if resp.status_code >= 400:
        raise StudioError(f"listing project {project}'s ML backends failed: HTTP {resp.status_code}")
    listed = resp.json()
    return [b for b in listed if isinstance(b, dict) and isinstance(b.get("url"), str)]


def backend_health(url: str) -> dict | None:
    """``GET <url>/health`` of a backend (CLI only: the operator's own action); None when it does not answer."""
    try:
        resp = requests.get(f"{url.rstrip('/')}/health", timeout=TIMEOUT_S, allow_redirects=False)
        body = resp.json() if resp.ok else None
    except (requests.RequestException, ValueError):
        return None
    return body if isinstance(body, dict) else None


def ours(backends: list[dict[str, Any]], own_url: str | None) -> list[dict[str, Any]]:
    """The backends at this backend's URL (all of them when it is not known)."""
    return [b for b in backends if same_backend_url(b["url"], own_url)] if own_url else backends


def ml_backend(project: int, backends: list[dict[str, Any]], own_url: str | None, probe: bool = False) -> Check:
    """An ML backend is connected at this backend's URL, and Label Studio reaches it."""
    name = f"project {project} ML backend"
    where = own_url or "http://<backend host>:9090"
    if not backends:
        return failed(name, "no ML backend is connected",
                      f"in Label Studio: project {project} -> Settings -> Model -> Connect model, URL {where}")
    mine = ours(backends, own_url)
    if not mine:
        urls = ", ".join(b["url"] for b in backends)
        return failed(name, f"connected at {urls}, not at this backend's URL {own_url}",
                      f"connect the model at {own_url} in Label Studio, or set LABELER_BACKEND_URL (here) and "
                      "LABELER_PUBLIC_URL (on the backend) to the URL Label Studio uses")
    for b in mine:
        if b.get("state") in UNREACHABLE_STATES:
            why = f": {str(b['error_message'])[:200]}" if b.get("error_message") else ""
            return failed(name, f"Label Studio cannot reach the ML backend at {b['url']} "
                                f"({b.get('readable_state') or b.get('state')}{why})", REACH_FIX.format(p=project))
    notes = []
    for b in mine if probe else []:
        health = backend_health(b["url"])
        if health is not None and health.get("model_class") != "labeler":
            return failed(name, f"{b['url']} answers /health, but not as labeler ({json.dumps(health)[:120]})",
                          f"connect project {project} to labeler's backend URL")
        notes.append("not reachable from here" if health is None else
                     "model ready" if health.get("model_ready") else "model still loading")
    note = f"; from here: {', '.join(notes)}" if notes else ""
    return passed(name, f"Label Studio reaches it at {', '.join(b['url'] for b in mine)}{note}")


def webhook_needs_credentials(own_url: str) -> bool | None:
    """Whether the backend at ``own_url`` refuses a webhook without credentials (CLI only): a POST of ``{}``
    is refused with 401 when it needs them and with 400 otherwise; it starts nothing. None: no answer."""
    try:
        code = requests.post(f"{own_url.rstrip('/')}/webhook", json={}, timeout=TIMEOUT_S,
                             allow_redirects=False).status_code
    except requests.RequestException:
        return None
    return True if code == 401 else False if code < 500 else None


def _hooks(studio: Studio, project: int, urls: list[str]) -> list[dict[str, Any]]:
    targets = {f"{u.rstrip('/')}/webhook" for u in urls}
    resp = studio.request("GET", "api/webhooks/", params={"project": project}, timeout=TIMEOUT_S)
    if resp.status_code >= 400:
        raise StudioError(f"listing project {project}'s webhooks failed: HTTP {resp.status_code}")
    return [h for h in resp.json() if isinstance(h, dict) and h.get("url") in targets]


def webhook(studio: Studio, project: int, backend_urls: list[str], credentials: dict[str, str],
            required: bool | None) -> Check:
    """The backend's webhook exists, is on, and carries its credentials.

    ``credentials``: the headers the backend expects, as known here (empty: not known); ``required``:
    whether the backend needs any (None: unknown)."""
    name = f"project {project} webhook"
    url = backend_urls[0] if backend_urls else "<backend URL>"
    hooks = _hooks(studio, project, backend_urls) if backend_urls else []
    if not hooks:
        return failed(name, f"no webhook to {url.rstrip('/')}/webhook: annotations and Start Training never reach "
                            "the backend", f"re-connect the model (project {project} -> Settings -> Model): "
                                           "connecting creates the webhook")
    hook = hooks[0]
    if hook.get("is_active") is False:
        return failed(name, f"the webhook to {hook['url']} is off", f"turn it on: project {project} -> Settings "
                      "-> Webhooks")
    headers: dict = hook["headers"] if isinstance(hook.get("headers"), dict) else {}
    carries = WEBHOOK_SECRET_HEADER in headers or "Authorization" in headers
    if credentials and all(headers.get(k) == v for k, v in credentials.items()):
        return passed(name, f"{hook['url']} carries the backend's credentials")
    if credentials or required:
        what = "other credentials than the backend's" if carries else "no credentials"
        return failed(name, f"the webhook to {hook['url']} has {what}: the backend refuses its events with 401, so "
                            "annotations never start a training", WEBHOOK_FIX.format(url=url, p=project))
    if required is False:
        return passed(name, f"{hook['url']} (the backend takes webhooks without credentials)")
    if carries:
        return passed(name, f"{hook['url']} carries credentials (not compared: no LABELER_WEBHOOK_SECRET or "
                            "BASIC_AUTH_USER here)")
    return warned(name, f"the webhook to {hook['url']} has no credentials: fine only if the backend needs none",
                  "pass --backend-url (or set LABELER_BACKEND_URL) to check whether it does")


def _flags(url: str, user: str, password: str) -> dict[str, Any]:
    """Label Studio's resolved feature flags, from ``/feature-flags/`` (a page for logged-in users only)."""
    session = requests.Session()
    form = session.get(f"{url}/user/login/", timeout=TIMEOUT_S)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    session.post(f"{url}/user/login/", timeout=TIMEOUT_S, allow_redirects=False,
                 data={"csrfmiddlewaretoken": csrf.group(1) if csrf else "", "email": user, "password": password},
                 headers={"Referer": f"{url}/user/login/"})
    if "sessionid" not in session.cookies:
        raise StudioError(f"could not log in to {url} as {user}")
    page = session.get(f"{url}/feature-flags/", timeout=TIMEOUT_S)
    page.raise_for_status()
    return json.loads(html.unescape(page.text.strip().removeprefix("<pre>").removesuffix("</pre>")))


def import_flag(url: str | None, user: str | None, password: str | None) -> Check:
    """The fast predictions import flag is on (only a logged-in user may read Label Studio's flags)."""
    name = "import flag"
    if not url:
        return warned(name, "not checked: no Label Studio URL")
    if not (user and password):
        return warned(name, "not checked: reading Label Studio's feature flags needs a login",
                      f"pass --ls-user/--ls-password (LABELER_LS_USER/LABELER_LS_PASSWORD), or open "
                      f"{url.rstrip('/')}/feature-flags/ logged in and look for \"{FAST_IMPORT_FLAG}\": true")
    try:
        flags = _flags(url.rstrip("/"), user, password)
    except (requests.RequestException, ValueError, StudioError) as exc:
        return failed(name, f"cannot read Label Studio's feature flags: {_short(exc)}",
                      "check --ls-user/--ls-password (LABELER_LS_USER/LABELER_LS_PASSWORD)")
    if flags.get(FAST_IMPORT_FLAG) is True:
        return passed(name, f"{FAST_IMPORT_FLAG} is on (fast prediction imports)")
    return warned(name, f"{FAST_IMPORT_FLAG} is off: every prediction import recounts the project's tasks "
                        "(about 43 predictions/s instead of 827, slower as the project grows)",
                  f"start Label Studio with {FAST_IMPORT_FLAG}=true in its environment (labeler demo does, "
                  "unless LABELER_LS_FAST_IMPORT=0)")
