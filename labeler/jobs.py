"""Background training jobs: one at a time per project, with a visible state.

State (``queued``/``running``/``done``/``failed`` with the reason) is kept in
memory and in ``MODEL_DIR/projects/<p>/job.json``. A trigger that arrives
while a job runs queues exactly one follow-up run, so a burst of annotation
events trains once more, not once per event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .config import Settings
from .predictor import Connection, Predictor

log = logging.getLogger(__name__)


class TrainingJobs:
    def __init__(self, settings: Settings, predictor: Predictor,
                 connection: Callable[[str], Connection]) -> None:
        self.settings = settings
        self.predictor = predictor
        self.connection = connection
        self._states: dict[str, dict] = {}
        self._rerun: set[str] = set()
        self._lock = threading.Lock()

    def _file(self, project: str) -> Path:
        return Path(self.settings.model_dir) / "projects" / project / "job.json"

    def state(self, project: str) -> dict:
        with self._lock:
            if project in self._states:
                return dict(self._states[project])
        try:
            return json.loads(self._file(project).read_text())
        except (FileNotFoundError, ValueError):
            return {"status": "none"}

    def _set(self, project: str, **values) -> None:
        with self._lock:
            st = self._states.setdefault(project, {})
            st.update(values, updated=time.time())
            snapshot = dict(st)
        path = self._file(project)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot, indent=2))
        tmp.replace(path)

    def submit(self, project: str, trigger: str) -> dict:
        """Start a job for ``project`` (or queue one after the running one); returns the state."""
        with self._lock:
            running = self._states.get(project, {}).get("status") in {"queued", "running"}
            if running:
                self._rerun.add(project)
        if running:
            return {**self.state(project), "rerun_queued": True}
        self._set(project, status="queued", trigger=trigger, error=None, version=None,
                  queued_at=time.time())
        threading.Thread(target=self._run, args=(project, trigger), name=f"train-{project}",
                         daemon=True).start()
        return self.state(project)

    def wait(self, project: str, timeout: float = 600) -> dict:
        """Block until the project's job is neither queued nor running (for CLI and tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.state(project)
            if st.get("status") not in {"queued", "running"} and project not in self._rerun:
                return st
            time.sleep(0.2)
        raise TimeoutError(f"training job of project {project} still running after {timeout} s")

    def _run(self, project: str, trigger: str) -> None:
        from .preannotate import preannotate
        from .studio import connect
        from .training import TrainingError, train_project

        while True:
            self._set(project, status="running", started=time.time(), step="starting")
            conn = self.connection(project)
            try:
                if not conn.hostname or not conn.token:
                    raise TrainingError(f"project {project} has no Label Studio connection: connect this backend "
                                        "to the project in Label Studio (Settings > Model), or set "
                                        "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
                outcome = train_project(self.predictor, project, conn, trigger,
                                        report=lambda step: self._set(project, step=step))
                refresh = None
                if outcome.promoted:
                    self._set(project, step="refreshing predictions")
                    rep = preannotate(connect(conn.hostname, conn.token), int(project), self.predictor,
                                      conn, progress=False)
                    refresh = {"predicted": rep.predicted, "failed": len(rep.failed)}
                self._set(project, status="done", version=outcome.version, promoted=outcome.promoted,
                          reason=outcome.meta.get("promotion_reason"), refreshed=refresh,
                          metrics=outcome.meta.get("metrics"), step=None, finished=time.time())
            except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never fatal
                log.error("training project %s failed: %s\n%s", project, exc, traceback.format_exc())
                self._set(project, status="failed", error=f"{type(exc).__name__}: {exc}", step=None,
                          finished=time.time())
            with self._lock:
                if project not in self._rerun:
                    return
                self._rerun.discard(project)
            trigger = "queued while a job was running"
