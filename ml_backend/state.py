"""What one backend process keeps between requests."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from labeler.config import Settings
from labeler.jobs import TrainingJobs
from labeler.predictor import Connection, Predictor
from labeler.studio import connect, set_model_version

log = logging.getLogger(__name__)


class BackendState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.predictor = Predictor(settings)
        self.connections: dict[str, Connection] = {}
        self.synced_versions: dict[str, str] = {}
        self.annotation_events: dict[str, int] = {}
        self.latencies: deque[float] = deque(maxlen=1000)
        self.counters = {"predict_requests": 0, "tasks_predicted": 0, "tasks_failed": 0}
        self.started = time.time()
        self.jobs = TrainingJobs(settings, self.predictor, self.connection)
        self._lock = threading.Lock()

    def connection(self, project: str) -> Connection:
        """Settings win (an admin-chosen API key); otherwise what /setup handed us."""
        if self.settings.label_studio_url and self.settings.label_studio_api_key:
            return Connection(self.settings.label_studio_url, self.settings.label_studio_api_key)
        return self.connections.get(project) or Connection()

    def remember(self, project: str, hostname: str | None, token: str | None) -> None:
        with self._lock:
            old = self.connections.get(project)
            if old is None or (old.hostname, old.token) != (hostname, token):
                self.connections[project] = Connection(hostname, token)

    def sync_version(self, project: str, version: str) -> None:
        """Keep Label Studio's project model_version equal to ours (in the background)."""
        with self._lock:
            if self.synced_versions.get(project) == version:
                return
            self.synced_versions[project] = version
        conn = self.connection(project)
        if not conn.hostname or not conn.token or not project.isdigit():
            return

        def run() -> None:
            try:
                if not set_model_version(connect(conn.hostname, conn.token, check=False), int(project), version):
                    with self._lock:
                        self.synced_versions.pop(project, None)
            except Exception as exc:  # noqa: BLE001
                log.warning("syncing model_version of project %s: %s", project, exc)
                with self._lock:
                    self.synced_versions.pop(project, None)
        threading.Thread(target=run, name=f"sync-version-{project}", daemon=True).start()
