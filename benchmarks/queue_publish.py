"""Publishing the labelling queue for many tasks against a real Label Studio (issue 12's bar: 50,000 in < 60 s).

Starts a Label Studio on loopback (SQLite), imports N tasks, builds the queue's
per-task state (random class probabilities and diversity features: what is
measured here is ranking + writing, not scoring), then times
:func:`labeler.studio.queue.publish`. Baseline in the same run: one
``PATCH /api/tasks/<id>`` per task for a sample, extrapolated to N.

    python benchmarks/queue_publish.py --tasks 50000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short", "true")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--labelled", type=int, default=500, help="tasks marked annotated (k-center's 'chosen')")
    ap.add_argument("--patch-sample", type=int, default=200)
    ap.add_argument("--url", help="use this Label Studio instead of starting one")
    ap.add_argument("--api-key", default="labeler-bench-token-0123456789")
    args = ap.parse_args()

    from labeler.dev.localserver import start_label_studio
    from labeler.studio.client import Studio
    from labeler.studio.queue import FIELD, QueueState, publish

    server = None
    if args.url:
        url = args.url
    else:
        server = start_label_studio(Path(tempfile.mkdtemp(prefix="ls-bench-")), "admin@example.com",
                                    "bench-pass-123", args.api_key)
        url = server.url
    try:
        ls = Studio.connect(url, args.api_key)
        choices = "".join(f'<Choice value="c{i}"/>' for i in range(args.classes))
        xml = f'<View><Image name="image" value="$image"/><Choices name="choice" toName="image">{choices}</Choices></View>'
        project = ls.projects.create(title="queue bench", label_config=xml).id
        t = time.perf_counter()
        ids: list[int] = []
        for s in range(0, args.tasks, 10000):
            r = ls.projects.import_tasks(id=project, request=[{"image": f"http://example.invalid/{i}.png"}
                                                              for i in range(s, min(args.tasks, s + 10000))],
                                         return_task_ids=True)
            ids += list(r.task_ids)
        print(f"imported {len(ids)} tasks in {time.perf_counter() - t:.1f} s")
        rng = np.random.default_rng(0)
        feats = rng.normal(size=(len(ids), 256)).astype(np.float16)
        annotated = np.zeros(len(ids), bool)
        annotated[rng.choice(len(ids), args.labelled, replace=False)] = True
        state = QueueState(np.array(ids), annotated, rng.dirichlet(np.ones(args.classes), len(ids)).astype(np.float32),
                           feats, "bench")
        t = time.perf_counter()
        rep = publish(ls, project, state, "margin_diverse", batch=25)
        total = time.perf_counter() - t
        print(rep.summary())
        print(f"publish total: {total:.1f} s for {rep.ranked} tasks (ranking {rep.order_s:.1f} s, "
              f"writing {rep.write_s:.1f} s)")
        http = ls
        first = http.request("api/tasks/", method="GET", params={"project": project, "view": rep.view,
                                                                  "page_size": 5, "fields": "task_only"}).json()
        got = [t["id"] for t in first["tasks"]]
        print(f"first tasks of the view {got}; queue top {rep.top[:5]}; match: {got == rep.top[:5]}")
        nxt = http.request(f"api/projects/{project}/next", method="GET", params={"view": rep.view}).json()
        print(f"next task served from the view: {nxt['id']} (queue top {rep.top[0]})")
        sample = ids[: args.patch_sample]
        t = time.perf_counter()
        for tid in sample:
            ls.tasks.update(id=tid, data={"image": "http://example.invalid/x.png", FIELD: 1})
        per = (time.perf_counter() - t) / len(sample)
        print(f"baseline, one PATCH per task: {per * 1000:.0f} ms each -> {per * len(ids):.0f} s for {len(ids)} tasks")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
