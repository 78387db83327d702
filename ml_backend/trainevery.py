"""``LABELER_TRAIN_EVERY``: a training after every N new annotations, counted by Label Studio itself.

The count is the project's ``total_annotations_number`` and the mark, the
count when this rule last started a training, lives in the model registry. Both
are shared, so the rule holds across backend replicas (with the registry on a
shared volume or object storage), restarts, and events a replica never got.
Editing an existing annotation adds nothing to the count; the next training
uses the edit. An annotation event only wakes the check: it runs in the
background (Label Studio waits about a second for the webhook's answer), one
at a time per project, and one more after it when events arrived meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from labeler.models.registry import Registry
from labeler.studio.client import Studio

log = logging.getLogger(__name__)


class TrainEvery:
    def __init__(self, every: int, registry: Registry, studio: Callable[[str], Studio | None],
                 submit: Callable[[str, str], dict]) -> None:
        self.every = every
        self.registry = registry
        self.studio = studio
        self.submit = submit
        self._lock = threading.Lock()
        self._checking: dict[str, bool] = {}  # project -> another check wanted after the running one

    def annotation_event(self, project: str) -> None:
        """Check ``project`` in the background (coalesced: events during a check cause one more)."""
        if self.every <= 0:
            return
        with self._lock:
            if project in self._checking:
                self._checking[project] = True
                return
            self._checking[project] = False
        threading.Thread(target=self._run, args=(project,), name=f"train-every-{project}", daemon=True).start()

    def _run(self, project: str) -> None:
        while True:
            try:
                self.check(project)
            except Exception as exc:  # noqa: BLE001 - Label Studio or the cluster down: the next event retries
                log.warning("project %s: train-every check failed: %s", project, exc)
            with self._lock:
                if not self._checking.get(project):
                    self._checking.pop(project, None)
                    return
                self._checking[project] = False

    def check(self, project: str) -> dict | None:
        """Start a training when ``every`` annotations were added since the last one this rule started;
        returns that job's state, or None."""
        studio = self.studio(project)
        if studio is None:
            return None
        count = studio.projects.get(id=int(project)).total_annotations_number or 0
        mark = self.registry.trained_at(project)
        if count - mark < self.every:
            return None
        self.registry.set_trained_at(project, count)  # first, so a replica checking next sees the mark
        try:
            job = self.submit(project, f"{count - mark} new annotations (LABELER_TRAIN_EVERY={self.every})")
        except Exception:
            self.registry.set_trained_at(project, mark)  # not started: the next event tries again
            raise
        if job.get("refused"):  # a training (Ray job) already runs, perhaps without these: count them again
            self.registry.set_trained_at(project, mark)
        return job
