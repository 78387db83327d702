"""What one backend process keeps between requests, and which Label Studio each project talks to.

The connection rule (README, "Security model"): with ``LABEL_STUDIO_URL`` and
``LABEL_STUDIO_API_KEY`` set, those are used and ``/setup`` cannot change
them. Otherwise ``/setup`` offers a URL and a token, and they are remembered
for the project only once the token has proved it can read that project on
that Label Studio; the first Label Studio to do so binds the backend (saved in
``MODEL_DIR/studio.json``), and ``/setup`` from any other origin is refused.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from labeler.config import Settings
from labeler.errors import RegistryError, SetupRefused
from labeler.fsutil import atomic_write_text
from labeler.media.fetching import ip_address
from labeler.models.predictor import Predictor
from labeler.studio.client import Connection, Studio
from labeler.studio.tasks import secure_backend_webhooks, set_model_version, webhook_credentials
from ml_backend.jobs import PreannotateJobs, make_jobs
from ml_backend.trainevery import TrainEvery

log = logging.getLogger(__name__)
VERIFIED_TTL_S = 600.0


def _resolvable_studio_host(url: str) -> bool:
    """Label Studio may live on a private network, but never at a link-local or multicast address."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a bad IPv6 literal or port raises ValueError
    except ValueError:
        return False
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username or parts.password:
        return False
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    for info in infos:
        addr = ip_address(str(info[4][0]))  # ::ffff:169.254.169.254 is the metadata service too
        if addr.is_link_local or addr.is_multicast or addr.is_unspecified:
            return False
    return True


class BackendState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.predictor = Predictor(settings, local_files=False)
        self.studios: dict[str, Studio] = {}  # per project, from a verified /setup
        self._configured: Studio | None = None
        self._verified: dict[tuple[str, str | None, str], float] = {}
        self.synced_versions: dict[str, str] = {}
        self.latencies: deque[float] = deque(maxlen=1000)
        self.counters = {"predict_requests": 0, "tasks_predicted": 0, "tasks_failed": 0, "predict_busy": 0,
                         "tasks_blind_controls": 0,
                         "tasks_deferred": 0, "tasks_not_deferred": 0}
        self.started = time.time()
        self.predict_slots = threading.BoundedSemaphore(settings.max_concurrent_predicts)
        self._lock = threading.Lock()
        self._binding = settings.model_dir / "studio.json"
        self._own_urls: dict[str, str] = {}  # per project: this backend's URL, as Label Studio called /setup
        self.predictor.registry.cleanup()
        self.jobs = make_jobs(settings, self.predictor, self.studio)
        self.preannotations = PreannotateJobs(settings, self.predictor, self.studio, training_state=self.jobs.state)
        self.train_every = TrainEvery(settings.train_every, self.predictor.registry, self.studio,
                                      lambda project, trigger: self.jobs.submit(project, trigger))
        if self.configured():
            for project in self.jobs.pending_refreshes():
                self.jobs.submit(project, trigger="restart: finishing an interrupted prediction refresh", train=False)

    # -- connections ------------------------------------------------------------------
    def configured(self) -> bool:
        return bool(self.settings.label_studio_url and self.settings.label_studio_api_key)

    def studio(self, project: str) -> Studio | None:
        """Settings win (an admin-chosen API key); otherwise what a verified /setup handed us."""
        with self._lock:
            if self.configured():
                if self._configured is None:
                    self._configured = Studio(self.settings.label_studio_url, self.settings.label_studio_api_key)
                return self._configured
            return self.studios.get(project)

    def connection(self, project: str) -> Connection:
        """What image downloads for ``project`` use (an empty connection when none is known)."""
        studio = self.studio(project)
        return studio.conn if studio is not None else Connection()

    def bound_origin(self) -> str | None:
        """The Label Studio this backend serves: LABEL_STUDIO_URL, or the first verified /setup's."""
        if self.settings.label_studio_url:
            return Connection(self.settings.label_studio_url).origin
        try:
            return json.loads(self._binding.read_text())["origin"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def setup(self, project: str, hostname: str | None, token: str | None, own_url: str) -> bool:
        """Remember the connection /setup offers, if it is allowed and verified; True when connected.

        ``own_url``: this backend's URL as Label Studio called it (``LABELER_PUBLIC_URL`` wins), so that
        only its own webhook gets its credentials."""
        with self._lock:
            self._own_urls[project] = own_url
        if self.configured():
            return self._verify(project, self.connection(project))
        try:
            candidate = Connection(self.settings.label_studio_url or hostname, token)
        except ValueError as exc:  # e.g. a bad IPv6 literal
            raise SetupRefused(f"refused Label Studio host {hostname!r}: {exc}") from None
        if not candidate:
            return False
        bound = self.bound_origin()
        if bound and candidate.origin != bound:
            raise SetupRefused(f"this backend serves the Label Studio at {bound}, not {candidate.origin} "
                               f"(set LABEL_STUDIO_URL, or remove {self._binding} to rebind)")
        if not candidate.base_url or not _resolvable_studio_host(candidate.base_url):
            raise SetupRefused(f"refused Label Studio host {candidate.base_url!r}")
        if not self._verify(project, candidate):
            log.warning("project %s: the token from /setup cannot read the project at %s; not remembered",
                        project, candidate.base_url)
            return False
        with self._lock:
            if not bound:
                atomic_write_text(self._binding, json.dumps({"origin": candidate.origin, "bound": time.time()}))
            self.studios[project] = Studio.of(candidate)
        return True

    def _verify(self, project: str, conn: Connection) -> bool:
        key = (conn.base_url or "", conn.token, project)
        with self._lock:
            if time.monotonic() - self._verified.get(key, -VERIFIED_TTL_S) < VERIFIED_TTL_S:
                return True
        if not conn.can_read_project(project):
            return False
        with self._lock:
            self._verified[key] = time.monotonic()
        # a verified project is known: its folder exists, training may be triggered by webhooks
        self.predictor.registry.project_dir(project, create=True)
        self._secure_webhooks(project, conn)
        if project in self.jobs.pending_refreshes():
            self.jobs.submit(project, trigger="finishing an interrupted prediction refresh", train=False)
        return True

    def own_url(self, project: str) -> str:
        """This backend's URL as Label Studio calls it for ``project`` (``LABELER_PUBLIC_URL`` wins; else the
        URL its last /setup came in on; empty when neither is known)."""
        with self._lock:
            return self.settings.public_url or self._own_urls.get(project, "")

    def _secure_webhooks(self, project: str, conn: Connection) -> None:
        """Label Studio's auto-created webhook carries no credentials: give it ours (in the background)."""
        s = self.settings
        headers = webhook_credentials(s.webhook_secret, s.basic_auth_user, s.basic_auth_pass)
        if not headers:
            return
        own = self.own_url(project)

        def run() -> None:
            # Label Studio calls /setup before it saves a new ML backend and creates its webhook: look again
            # for a while until the webhook exists.
            for wait in (0.5, 1, 2, 4, 8, 15, 30):
                time.sleep(wait)
                try:
                    found, updated = secure_backend_webhooks(Studio.of(conn), int(project), headers, own)
                except Exception as exc:  # noqa: BLE001 - the SDK raises ApiError and httpx errors
                    log.warning("project %s: could not add credentials to Label Studio's webhook: %s", project, exc)
                    continue
                if updated:
                    log.info("project %s: added this backend's credentials to %d Label Studio webhook(s)",
                             project, updated)
                if found:
                    return
            log.warning("project %s: no ML backend of the project has this backend's URL %s, so its webhook "
                        "has no credentials; set LABELER_PUBLIC_URL to the URL Label Studio uses", project, own)
        threading.Thread(target=run, name=f"secure-webhooks-{project}", daemon=True).start()

    def serve(self, project: str, version: str | None) -> dict | None:
        """Serve ``version`` (None: the zero-shot model) from the next request on; with a Label Studio
        known for the project, re-predict its tasks and re-rank the queue in the background
        (returns that job's state). An unknown project is refused: promoting would make it known."""
        if project not in self.predictor.registry.projects():
            raise RegistryError(f"project {project} is unknown to this backend (no verified /setup, no versions)")
        self.predictor.registry.promote(project, version)
        if self.studio(project) is None:
            return None
        return self.jobs.refresh_serving(project, f"promoted {version or 'zero-shot'} by admin")

    def preannotate_later(self, project: str, tasks: list) -> dict | None:
        """The tasks of a ``/predict`` beyond ``LABELER_MAX_TASKS_PER_PREDICT`` become a background
        pre-annotation of ``project`` (:class:`PreannotateJobs`): only for a project a verified ``/setup`` made
        known, with its verified (or configured) Label Studio connection, which lists the project's own tasks,
        so an id of another project is never touched. Otherwise None, and the log says why."""
        ids = {t["id"] for t in tasks if isinstance(t, dict) and type(t.get("id")) is int}
        why = None
        if not ids:
            why = "none of them has a task id"
        elif self.studio(project) is None or not self.known(project):
            why = ("the project has no verified Label Studio connection (connect the backend in Label Studio, "
                   "Settings > Model, or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY), so nothing may list "
                   f"its tasks; run `labeler preannotate --project {project}`")
        if why:
            self.counters["tasks_not_deferred"] += len(tasks)
            log.warning("project %s: %d tasks beyond LABELER_MAX_TASKS_PER_PREDICT=%d got no prediction and are "
                        "not pre-annotated in the background: %s", project, len(tasks),
                        self.settings.max_tasks_per_predict, why)
            return None
        self.counters["tasks_deferred"] += len(ids)
        log.info("project %s: %d tasks beyond LABELER_MAX_TASKS_PER_PREDICT=%d: pre-annotating them in the "
                 "background", project, len(ids), self.settings.max_tasks_per_predict)
        asked = self.settings.max_tasks_per_predict + len(tasks)
        return self.preannotations.submit(project, ids, trigger=f"/predict of {asked:,} tasks")

    def known(self, project: str) -> bool:
        """A project some verified /setup (or an earlier training) has made known to this backend."""
        return self.predictor.registry.project_dir(project).is_dir()

    # -- Label Studio's project model_version ---------------------------------------------
    def sync_version(self, project: str, version: str) -> None:
        """Keep Label Studio's project model_version equal to ours (in the background)."""
        studio = self.studio(project)
        if studio is None or not self.known(project):
            return
        with self._lock:
            if self.synced_versions.get(project) == version:
                return
            self.synced_versions[project] = version

        def run() -> None:
            try:
                if not set_model_version(studio, int(project), version):
                    with self._lock:
                        self.synced_versions.pop(project, None)
            except Exception as exc:  # noqa: BLE001
                log.warning("syncing model_version of project %s: %s", project, exc)
                with self._lock:
                    self.synced_versions.pop(project, None)
        threading.Thread(target=run, name=f"sync-version-{project}", daemon=True).start()
