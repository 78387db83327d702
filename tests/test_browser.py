"""The annotator's and the admin's view in a real browser: Playwright driving Debian's chromium against the
real Label Studio and the real backend (gunicorn, tiny BLIP-2).

log in -> the "Least confident first" tab shows score, the model's answer and the image -> open the first
task: the model's choice is preselected with its score -> correct it and submit -> "Start Training" in the
model card -> the card and the task list show the new version's predictions -> the admin page renders the
versions table and the learning curve. Screenshots go to test-artefacts/browser/ (with
LABELER_UPDATE_DOCS=1 the labelling page is also copied to docs/labelling-page.png for the README).

Skips, saying why, where playwright or chromium is missing (``make test`` installs both where it can).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import requests

from labeler.dev.demo import wait_for_queue
from labeler.studio.queue import VIEW as QUEUE_VIEW
from labeler.studio.tasks import uncertainty_view

from .conftest import eyes_project

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = ROOT / "test-artefacts" / "browser"
ADMIN = {"Authorization": "Bearer admin-secret"}  # tests/conftest.py's backend
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]', or make test)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed: `make test` installs it with apt-get where it runs as "
                    "root (or with sudo); Playwright's own browser download needs the internet")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def login_cookies(ls_url: str, email: str, password: str) -> list[dict]:
    """Label Studio's pages want a session cookie, not the API token: log in through the form."""
    s = requests.Session()
    form = s.get(f"{ls_url}/user/login/", timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    r = s.post(f"{ls_url}/user/login/", data={"csrfmiddlewaretoken": csrf, "email": email, "password": password},
               headers={"Referer": f"{ls_url}/user/login/"}, timeout=30)
    assert r.ok and "sessionid" in s.cookies, "login through /user/login/ failed"
    return [{"name": c.name, "value": c.value, "url": ls_url} for c in s.cookies]


def tasks_of(ls, pid, view=None):
    params = {"project": pid, "fields": "all", "page_size": 100, **({"view": view} if view else {})}
    return ls.request("GET", "api/tasks/", params=params).json()["tasks"]


def task_json(ls, tid: int) -> dict:
    return ls.request("GET", f"api/tasks/{tid}", ).json()


def wait_job(backend_url, pid, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = requests.get(f"{backend_url}/admin/projects/{pid}/job", headers=ADMIN, timeout=10).json()
        if st.get("status") in {"done", "failed"}:
            return st
        time.sleep(0.5)
    raise TimeoutError(st)


def shot(page, name: str) -> Path:
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


@pytest.fixture(scope="module")
def project(label_studio, backend, tmp_path_factory):
    ls, pid = eyes_project(label_studio, tmp_path_factory.mktemp("eyes"), 16, "eyes in a browser")
    ml = ls.ml.create(project=pid, url=backend[0], title="labeler")
    ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    # The backend publishes both tabs and the answers a few seconds after the /predict (labeler.studio.autoqueue).
    assert wait_for_queue(ls, pid, timeout=120) is not None, "no queue published after Retrieve predictions"
    view = uncertainty_view(ls, pid)
    # The backend sets the project's model_version in the background after /predict, and Label Studio
    # sorts by the score of that version's predictions only: wait for it, as an annotator would.
    version = tasks_of(ls, pid, view)[0]["predictions"][0]["model_version"]
    end = time.monotonic() + 60
    while ls.projects.get(id=pid).model_version != version and time.monotonic() < end:
        time.sleep(0.5)
    return ls, pid, ml.id, view


def test_annotate_retrain_and_admin_page_in_a_real_browser(browser, label_studio, backend, project):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    ls_url, _ = label_studio
    ls, pid, ml_id, view = project
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.add_cookies(login_cookies(ls_url, "admin@example.com", "test-pass-123"))
    page = ctx.new_page()

    # Least confident first, with the score, the image and the model's answer (a class name) side by side.
    queue = tasks_of(ls, pid, view)
    first = queue[0]
    pred = first["predictions"][0]
    chosen = pred["result"][0]["value"]["choices"][0]
    other = "closed" if chosen == "open" else "open"
    zeroshot_version = pred["model_version"]
    assert [t["predictions"][0]["score"] for t in queue] == sorted(t["predictions"][0]["score"] for t in queue)
    page.goto(f"{ls_url}/projects/{pid}/data?tab={view}")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    headers = page.locator(".lsf-table-head").first.inner_text()
    order = [headers.index(h) for h in ("Prediction score", "image", "labeler_answer")]
    assert order == sorted(order), f"score, image and answer must be side by side in that order: {headers!r}"
    assert "Prediction results" not in headers, "the raw prediction JSON is hidden"
    first_row = page.locator("[class*=table__row]").first
    row_text = first_row.inner_text()
    assert f"{pred['score']:.3f}" in row_text.split("\n") and chosen in row_text.split("\n"), row_text
    shot(page, "1-queue")

    # The first task in the editor: the model's choice is preselected, its score on the prediction's tab.
    first_row.click()
    page.wait_for_url(re.compile(rf"task={first['id']}"), timeout=30_000)
    expect(page.locator(f"input.ant-radio-input[name='{chosen}']")).to_be_checked(timeout=60_000)
    assert not page.locator(f"input.ant-radio-input[name='{other}']").is_checked()
    assert f"{pred['score'] * 100:.2f}%" in page.locator("body").inner_text()
    labelling = shot(page, "2-labelling-page-prediction-preselected")
    if os.environ.get("LABELER_UPDATE_DOCS") == "1":
        shutil.copy(labelling, ROOT / "docs" / "labelling-page.png")

    # Correct it and submit: Label Studio stores the annotator's label, not the model's.
    page.locator("label").filter(has_text=re.compile(rf"^{other}")).first.click()
    expect(page.locator(f"input.ant-radio-input[name='{other}']")).to_be_checked()
    page.get_by_role("button", name="Submit").click()
    deadline = time.monotonic() + 30
    while not task_json(ls, first["id"])["annotations"] and time.monotonic() < deadline:
        time.sleep(0.5)
    ann = task_json(ls, first["id"])["annotations"]
    assert ann and ann[0]["result"][0]["value"]["choices"] == [other], ann
    shot(page, "3-submitted")

    # Enough labels of both classes to train (the backend needs 3 per class here) through the API; 7 stay unlabelled.
    rest = [t for t in tasks_of(ls, pid) if t["id"] != first["id"]]
    for label in ("open", "closed"):
        for t in [t for t in rest if f"{label}_" in t["data"]["image"]][:4]:
            ls.annotations.create(id=t["id"], result=[{"from_name": "choice", "to_name": "image",
                                                       "type": "choices", "value": {"choices": [label]}}])

    # "Start Training" in the model card's menu.
    page.goto(f"{ls_url}/projects/{pid}/settings/ml")
    page.get_by_label("Machine learning model options").click()
    page.get_by_text("Start Training", exact=True).click()
    page.get_by_role("button", name="Start Training").click()  # the confirmation dialog
    st = wait_job(backend[0], pid)
    assert st["status"] == "done" and st["promoted"], st
    version = st["version"]

    # The card says what serves and what the last training did; every task holds one prediction, the new one.
    # The card is updated just after the job is marked done (Label Studio re-checks the backend on every
    # card change, seconds on a loaded machine): reload until it shows, as a person would.
    card = page.get_by_text(re.compile(rf"serving {re.escape(version)}"))
    deadline = time.monotonic() + 90
    while True:
        page.goto(f"{ls_url}/projects/{pid}/settings/ml")
        try:
            card.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            assert time.monotonic() < deadline, "the model card never named the new version"
    assert "promoted" in card.inner_text()
    shot(page, "4-model-card-after-training")
    assert ls.ml.get(id=ml_id).description and f"{backend[0]}/dashboard" in ls.ml.get(id=ml_id).description
    tasks = tasks_of(ls, pid, view)
    assert all([p["model_version"] for p in t["predictions"]] == [version] for t in tasks), \
        "one prediction per task, the serving version's (the zero-shot ones were removed)"
    page.goto(f"{ls_url}/projects/{pid}/data?tab={view}")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    new_first = tasks[0]["predictions"][0]
    row_text = page.locator("[class*=table__row]").first.inner_text()
    assert f"{new_first['score']:.3f}" in row_text, (row_text, new_first)
    assert zeroshot_version != version
    shot(page, "5-queue-after-training")

    # The refresh also ranked the unlabelled tasks: "Next to label", the first tab, lists them in queue order.
    next_view = next(v for v in ls.views.list(project=pid) if (v.data or {}).get("title") == QUEUE_VIEW)
    expected = [t["id"] for t in tasks_of(ls, pid, next_view.id)]
    assert len(expected) == 7 and not any(t["total_annotations"] for t in tasks_of(ls, pid, next_view.id))
    page.goto(f"{ls_url}/projects/{pid}/data")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    assert page.locator("[class*=tab]").filter(has_text=QUEUE_VIEW).count() >= 1
    page.goto(f"{ls_url}/projects/{pid}/data?tab={next_view.id}")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    rows = page.locator("[class*=table__row]")
    expect(rows).to_have_count(len(expected))
    shown = [int(rows.nth(i).inner_text().split("\n")[0]) for i in range(rows.count())]
    assert shown == expected, (shown, expected)
    shot(page, "5b-next-to-label-queue")

    # The admin page: log in with the admin token, then the versions table and the learning curve.
    admin = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    resp = admin.goto(f"{backend[0]}/dashboard")
    assert resp.status == 401 and admin.locator("input[name=token]").count() == 1
    admin.fill("input[name=token]", "admin-secret")
    admin.get_by_role("button", name="Log in").click()
    admin.wait_for_selector("table.versions")
    assert version in admin.locator("table.versions").inner_text()
    assert admin.locator(f"#project-{pid} .learning-curve svg").count() == 1
    assert admin.locator(f"#project-{pid} table.confusion").count() == 1
    shot(admin, "6-admin-page")
    ctx.close()
