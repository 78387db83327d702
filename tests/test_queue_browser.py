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
