"""The "Next to label" tab in a real browser (issue 12): the first tab, its first row the queue's first task;
and what Label Studio 1.23's "Label All Tasks" button really serves.

Playwright driving Debian's chromium against the real Label Studio; skips, saying why, without them
(the fixtures come from tests/test_browser.py).
"""

from __future__ import annotations

import re

import pytest

from labeler.studio.client import Studio
from tests.test_browser import browser, login_cookies, shot, tasks_of  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def queue_project(browser, label_studio, tiny_model, image_dir, tmp_path_factory):  # noqa: F811
    """A pre-annotated project (tiny BLIP-2) and a logged-in browser context; yields (ctx, pid, view, expected)."""
    from labeler.config import Settings
    from labeler.dev.demo import template, upload_images
    from labeler.models.predictor import Predictor
    from labeler.studio.preannotate import preannotate
    from labeler.studio.queue import VIEW

    url, token = label_studio
    ls = Studio(url, token)
    pid = ls.projects.create(title="queue in a browser", label_config=template("binary")).id
    upload_images(url, token, pid, sorted(image_dir.iterdir()))
    predictor = Predictor(Settings(model_dir=tmp_path_factory.mktemp("md"), zeroshot_model=str(tiny_model),
                                   local_files_only=True, local_root=image_dir))
    predictor.load_scorer()
    preannotate(ls, pid, predictor, progress=False)
    view = next(v for v in ls.views.list(project=pid) if (v.data or {}).get("title") == VIEW)
    expected = [t["id"] for t in tasks_of(ls, pid, view.id)]
    assert expected != sorted(expected), "the queue differs from id order, so following it is no accident"
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.add_cookies(login_cookies(url, "admin@example.com", "test-pass-123"))
    yield ctx, pid, view.id, expected
    ctx.close()


@pytest.fixture
def queue_page(queue_project, label_studio):
    """A fresh page on the project's Data Manager for each test, so no test sees where another left off;
    yields (page, view, expected)."""
    ctx, pid, view, expected = queue_project
    page = ctx.new_page()
    page.goto(f"{label_studio[0]}/projects/{pid}/data")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    yield page, view, expected
    page.close()


def test_next_to_label_is_the_first_tab_and_lists_the_queue(queue_page):
    from labeler.studio.queue import VIEW

    page, view, expected = queue_page
    tabs = page.locator("[class*=tab]").filter(has_text=re.compile(r"^\s*\S"))
    assert VIEW in tabs.first.inner_text(), "Next to label is the first tab"
    page.goto(re.sub(r"\?.*$", "", page.url) + f"?tab={view}")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    rows = page.locator("[class*=table__row]")
    shown = [int(rows.nth(i).inner_text().split("\n")[0]) for i in range(rows.count())]
    shot(page, "queue-next-to-label")
    assert shown == expected


def test_label_all_tasks_serves_by_the_project_sampling_not_the_tab(queue_page, label_studio):
    """Label Studio 1.23's "Label All Tasks" sends no tab (POST /api/dm/actions?id=next_task&tabID=<tab> with
    only the project in the body; nothing server-side reads tabID), so it serves by the project's
    sampling, uncertainty sampling here: the lowest stored prediction score first, not the tab's order."""
    page, view, expected = queue_page
    url, token = label_studio
    ls = Studio(url, token)
    pid = int(re.search(r"/projects/(\d+)/", page.url)[1])
    page.goto(re.sub(r"\?.*$", "", page.url) + f"?tab={view}")
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    with page.expect_request(lambda r: "id=next_task" in r.url, timeout=60_000) as req, \
            page.expect_response(lambda r: "id=next_task" in r.url, timeout=60_000) as nxt:
        page.get_by_role("button", name=re.compile("Label All Tasks", re.I)).click()
    assert f"tabID={view}" in req.value.url and "view" not in (req.value.post_data or "")
    tasks = tasks_of(ls, pid, view)
    least_confident = min(tasks, key=lambda t: t["predictions"][0]["score"])["id"]
    shot(page, "queue-label-all-tasks")
    assert nxt.value.json()["id"] == least_confident


def _columns(page) -> list[tuple[str, list[str]]]:
    """(header, cells' contents top to bottom) per column of the Data Manager's table, the row-select column
    left out; a cell with an image or a button reads "<img>"/"<button>"."""
    heads = page.locator(".lsf-table-head .lsf-table__cell").evaluate_all(
        "es => es.map(e => [e.getAttribute('data-id') || e.className, e.innerText.trim()])")
    rows = page.locator("[class*=table__row]").evaluate_all("""rs => rs.map(r => Array.from(
        r.querySelectorAll('.lsf-table__cell')).map(c => c.innerText.trim()
        || (c.querySelector('img') ? '<img>' : c.querySelector('button') ? '<button>' : '')))""")
    cols = [(f"{cid} {text}".strip(), [r[i] for r in rows if i < len(r)]) for i, (cid, text) in enumerate(heads)]
    return [c for c in cols if "select-all" not in c[0]]


def test_the_demo_opens_next_to_label_with_readable_answers(browser, label_studio, backend, tmp_path, capsys):  # noqa: F811
    """As a new user of `labeler demo`: the project pre-annotated through Label Studio's "Retrieve predictions"
    (the demo's own steps), the printed URL opens "Next to label", the first tab, "Least confident first"
    beside it; its rows follow the queue, its answer column shows class names, no column is empty and the raw
    prediction JSON is not shown."""
    from labeler.dev.demo import _demo_project, _print_ready, synthetic_eyes
    from labeler.studio.queue import FIELD, VIEW
    from labeler.studio.tasks import ANSWER_FIELD, UNCERTAINTY_VIEW

    url, token = label_studio
    files = sorted(synthetic_eyes(tmp_path / "eyes", n=14, seed=5).iterdir())
    info = _demo_project(url, token, backend[0], files, "binary")
    assert info["queue"], "the backend published the queue after Retrieve predictions"
    _print_ready({**info, "label_studio": url, "username": "admin@example.com", "password": "test-pass-123",
                  "token": token, "admin_token": "admin-secret", "backend": backend[0], "tasks": len(files),
                  "env_file": "labeler.env"}, tmp_path)
    printed = capsys.readouterr().out
    link = re.search(r"Label Studio\s+(\S+)", printed)[1]
    assert link.endswith(f"?tab={info['view']}") and f'Label from the "{VIEW}" tab' in printed, printed

    ls = Studio(url, token)
    pid = info["project"]
    queue = tasks_of(ls, pid, info["view"])
    assert [t["data"][FIELD] for t in queue] == list(range(len(files))), "the tab's order is the queue's"
    chosen = {t["id"]: t["predictions"][0]["result"][0]["value"]["choices"][0] for t in queue}
    assert all(t["data"][ANSWER_FIELD] == chosen[t["id"]] for t in queue)

    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.add_cookies(login_cookies(url, "admin@example.com", "test-pass-123"))
    page = ctx.new_page()
    page.goto(link)
    page.wait_for_selector("[class*=table__row]", timeout=60_000)
    page.wait_for_timeout(500)
    assert page.get_by_role("tab").all_inner_texts()[:2] == [VIEW, UNCERTAINTY_VIEW]
    shot(page, "demo-next-to-label")
    cols = _columns(page)
    headers = [h for h, _ in cols]
    assert not any("Prediction results" in h or "Annotation results" in h for h in headers), headers
    empty = [h for h, cells in cols if not any(cells)]
    assert not empty, f"empty columns: {empty}"
    ids = next(cells for h, cells in cols if h.startswith("tasks:id"))
    assert [int(i) for i in ids] == [t["id"] for t in queue[:len(ids)]], "rows in queue order"
    answers = next(cells for h, cells in cols if ANSWER_FIELD in h)
    assert answers == [chosen[int(i)] for i in ids] and set(answers) <= {"open", "closed"}, answers
    scores = next(cells for h, cells in cols if "Prediction score" in h)
    assert scores == [f"{t['predictions'][0]['score']:.3f}" for t in queue[:len(ids)]], "the score, honest"

    page.get_by_role("tab", name=UNCERTAINTY_VIEW).click()
    page.wait_for_url(re.compile(rf"tab={info['least_confident_view']}\b"), timeout=30_000)
    page.wait_for_timeout(1000)
    cols = _columns(page)
    shot(page, "demo-least-confident-first")
    assert not [h for h, cells in cols if not any(cells)], [h for h, _ in cols]
    answers = next(cells for h, cells in cols if ANSWER_FIELD in h)
    assert set(answers) <= {"open", "closed"} and answers, answers
    scores = [float(s) for s in next(cells for h, cells in cols if "Prediction score" in h)]
    assert scores == sorted(scores), "least confident first"
    ctx.close()
