"""Training and prediction refresh as Ray jobs: at most one job per project, across backend replicas.

Ray Jobs refuses a ``submission_id`` it has seen (and keeps a finished job's id
taken), so the id is the lock: attempt *n* of project *p* is
``labeler-p<p>-<n>`` (a training) or ``labeler-p<p>-refresh-<n>`` (a prediction
refresh, which may run beside a training: pre-annotation has its own lock),
where *n* is one more than the highest so far. Two replicas that race compute
the same id and only one submission is accepted; the other re-reads and finds
the job running. A failed or finished job leaves the next number free, so a new
attempt is always possible.

The job runs the CLI (``labeler train`` / ``labeler preannotate``) on the
cluster, which must have labeler installed and see ``MODEL_DIR`` (or use the
registry on object storage), with the settings passed in its runtime
environment; inside a Ray job ``RAY_ADDRESS`` is set, so the refresh itself runs
on Ray Data too.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from labeler.distributed import require_ray
from labeler.errors import ClusterError
from labeler.ids import check_project

log = logging.getLogger(__name__)

# Settings a job needs. They are visible to whoever may read the cluster's job list, so the backend's own
# credentials (admin token, webhook secret, basic auth) never go; the cluster should run with Ray's token
# auth (RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN for the backend) to keep the rest to its users.
PASSED_ENV = re.compile(r"^(LABELER_.*|MODEL_DIR|LABEL_STUDIO_URL|LABEL_STUDIO_API_KEY|HF_.*|TRANSFORMERS_.*)$")
NOT_PASSED = re.compile(r"^(LABELER_ADMIN_TOKEN|LABELER_WEBHOOK_SECRET|BASIC_AUTH_.*)$")
ACTIVE = {"PENDING", "RUNNING"}
_STATUS = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed", "STOPPED": "failed"}
KINDS = {"train": "", "refresh": "refresh-"}  # kind -> its part of the job id
REQUEST_TIMEOUT_S = 10.0  # Ray's job client waits forever on a job server that accepts and never answers
LISTING_MAX_AGE_S = 2.0  # /metrics reads every project's state: one listing of the cluster's jobs serves them all


def command(project: str, kind: str) -> str:
    """The job's entry point: ``train`` (train, evaluate, promote, refresh) or ``refresh`` (predictions only)."""
    if kind == "train":
        return f"labeler train --project {shlex.quote(project)}"
    if kind == "refresh":
        return f"labeler preannotate --project {shlex.quote(project)}"
    raise ValueError(f"unknown job kind {kind!r}: train or refresh")


def _cluster_errors() -> tuple[type[BaseException], ...]:
    """What Ray's job client raises when the job server is down, slow, or refuses the token."""
    import requests
    from ray.exceptions import AuthenticationError

    return requests.RequestException, AuthenticationError, OSError, RuntimeError, ValueError


def _job_client(address: str, headers: dict | None, timeout: float):
    """Ray's ``JobSubmissionClient`` whose every request (the version check in its constructor too) has a timeout."""
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, *args, **kwargs):
            kwargs.setdefault("timeout", timeout)
            return super()._do_request(*args, **kwargs)

    return TimedJobSubmissionClient(address, headers=headers)


class RayJobs:
    """Submits and reads a project's jobs on the Ray cluster at ``address`` (its job server's URL).

    ``gpus``: GPUs a training job's driver asks for, so it runs on a GPU worker rather than the head.
    """

    def __init__(self, address: str, env: Mapping[str, str] | None = None,
                 entrypoint: Callable[[str, str], str] = command, token: str | None = None,
                 gpus: float = 0, timeout: float = REQUEST_TIMEOUT_S) -> None:
        require_ray()
        self.address = address
        self.token = token or os.environ.get("RAY_AUTH_TOKEN")
        env = os.environ if env is None else env
        self.env = {k: v for k, v in env.items() if PASSED_ENV.match(k) and not NOT_PASSED.match(k)}
        self.entrypoint = entrypoint
        self.gpus = gpus
        self.timeout = timeout
        self._client: Any = None  # ray.job_submission.JobSubmissionClient, made on first use
        self._listing: tuple[float, list | ClusterError] = (float("-inf"), [])  # (when, the jobs or why not)
        self._listing_lock = threading.Lock()

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn`` of Ray's job client; any failure to reach or use the job server is a ClusterError."""
        try:
            if self._client is None:  # made on first use: a backend starts while its cluster is down
                # Ray's token auth: the token is sent ourselves, as Ray reads RAY_AUTH_MODE once per process.
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
                self._client = _job_client(self.address, headers, self.timeout)
            return fn(self._client, *args, **kwargs)
        except _cluster_errors() as exc:
            raise ClusterError(f"the Ray job server at {self.address} {what}: {exc}") from exc

    @property
    def client(self):
        """Ray's own job client (for what labeler does not wrap: logs, stopping a job)."""
        return self._call("cannot be reached", lambda c: c)

    def _list_jobs(self, max_age: float) -> list:
        """Every job of the cluster, as listed at most ``max_age`` seconds ago. A failure is remembered as
        long: a job server that is down costs one timeout per listing, not one per project."""
        with self._listing_lock:
            when, listed = self._listing
            if time.monotonic() - when > max_age:
                try:
                    listed = self._call("cannot be reached", lambda c: c.list_jobs())
                except ClusterError as exc:
                    listed = exc
                self._listing = (time.monotonic(), listed)
            if isinstance(listed, ClusterError):
                raise listed
            return listed

    def _jobs(self, project: str, kind: str | None = None, max_age: float = 0) -> list:
        """The project's jobs of ``kind`` (None: every kind), oldest first."""
        kinds = [kind] if kind else list(KINDS)
        pattern = re.compile(rf"labeler-p{re.escape(project)}-({'|'.join(KINDS[k] for k in kinds)})(\d+)")
        listed = self._list_jobs(max_age)
        numbered = [(j, m) for j in listed if (m := pattern.fullmatch(j.submission_id or ""))]
        return [j for j, m in sorted(numbered, key=lambda jm: (jm[0].start_time or 0, int(jm[1][2])))]

    def state(self, project: str, kind: str | None = None, max_age: float = 0) -> dict:
        """The latest job of ``project`` in labeler's job vocabulary (``{"status": "none"}`` if none),
        from a listing at most ``max_age`` seconds old."""
        jobs = self._jobs(check_project(project), kind, max_age)
        if not jobs:
            return {"status": "none"}
        j = jobs[-1]
        meta = j.metadata or {}
        started = (j.start_time or 0) / 1000 or None
        return {"status": _STATUS.get(str(j.status), str(j.status).lower()), "job_id": j.submission_id,
                "trigger": meta.get("trigger"), "kind": meta.get("kind"),
                "error": j.message if str(j.status) in ("FAILED", "STOPPED") else None,
                "queued_at": started, "started": started, "finished": (j.end_time or 0) / 1000 or None}

    def _next_id(self, project: str, kind: str, jobs: list) -> str:
        prefix = f"labeler-p{project}-{KINDS[kind]}"
        numbers = [int(j.submission_id[len(prefix):]) for j in jobs]
        return f"{prefix}{max(numbers, default=0) + 1}"

    def submit(self, project: str, trigger: str, kind: str = "train", env: Mapping[str, str] | None = None,
               attempts: int = 5, agent_wait_s: float = 60) -> dict:
        """Start a job for ``project`` unless one of ``kind`` is queued or running (then its state,
        ``refused: True``).

        ``env``: settings for this job on top of the passed environment (the project's Label Studio)."""
        project = check_project(project)
        command(project, kind)  # an unknown kind is refused before anything is submitted
        tries, agent_deadline = 0, time.monotonic() + agent_wait_s
        while tries < attempts:
            jobs = self._jobs(project, kind)
            if jobs and str(jobs[-1].status) in ACTIVE:
                return {**self.state(project, kind), "refused": True}
            sid = self._next_id(project, kind, jobs)
            try:
                self._call(f"refused job {sid}", lambda c: c.submit_job(
                    entrypoint=self.entrypoint(project, kind), submission_id=sid,
                    runtime_env={"env_vars": {**self.env, **(env or {})}},
                    entrypoint_num_gpus=self.gpus if kind == "train" else 0,
                    metadata={"project": project, "kind": kind, "trigger": trigger[:200]}))
            except ClusterError as exc:
                if "No available agent" in str(exc) and time.monotonic() < agent_deadline:
                    time.sleep(1.0)  # a cluster just started: its job agent comes up a little after the head
                    continue
                if "already exists" not in str(exc):
                    raise
                log.info("job %s was submitted by another replica", sid)  # it won this attempt: look again
                tries += 1
                continue
            return {**self.state(project, kind), "refused": False}
        raise ClusterError(f"could not submit a job for project {project}: the job ids kept changing")

    def wait(self, project: str, timeout: float = 600, kind: str | None = None) -> dict:
        """Block until the project's latest job (of ``kind``) is neither queued nor running."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.state(project, kind)
            if st["status"] not in ("queued", "running"):
                return st
            time.sleep(0.5)
        raise TimeoutError(f"Ray job of project {project} still running after {timeout} s")
