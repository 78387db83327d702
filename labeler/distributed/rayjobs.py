"""Training and prediction refresh as Ray jobs: at most one job per project, across backend replicas.

Ray Jobs refuses a ``submission_id`` it has seen (and keeps a finished job's id
taken), so the id is the lock: attempt *n* of project *p* is
``labeler-p<p>-<n>``, where *n* is one more than the project's jobs so far.
Two replicas that race compute the same id and only one submission is
accepted; the other re-reads and finds the job running. A failed or finished
job leaves the next number free, so a new attempt is always possible.

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
import time
from collections.abc import Callable, Mapping

from labeler.distributed import require_ray
from labeler.errors import ClusterError
from labeler.learning.registry import check_project

log = logging.getLogger(__name__)

# Settings a job needs; secrets among them are visible to whoever may read the cluster's job list
# (Ray's token auth, on by default since 2.60, keeps that to the cluster's users).
PASSED_ENV = re.compile(r"^(LABELER_.*|MODEL_DIR|LABEL_STUDIO_URL|LABEL_STUDIO_API_KEY|HF_.*|TRANSFORMERS_.*)$")
ACTIVE = {"PENDING", "RUNNING"}
_STATUS = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed", "STOPPED": "failed"}


def command(project: str, kind: str) -> str:
    """The job's entry point: ``train`` (train, evaluate, promote, refresh) or ``refresh`` (predictions only)."""
    if kind == "train":
        return f"labeler train --project {shlex.quote(project)}"
    if kind == "refresh":
        return f"labeler preannotate --project {shlex.quote(project)}"
    raise ValueError(f"unknown job kind {kind!r}: train or refresh")


class RayJobs:
    """Submits and reads a project's jobs on the Ray cluster at ``address`` (its dashboard URL)."""

    def __init__(self, address: str, env: Mapping[str, str] | None = None,
                 entrypoint: Callable[[str, str], str] = command, token: str | None = None) -> None:
        require_ray()
        self.address = address
        self.token = token or os.environ.get("RAY_AUTH_TOKEN")
        env = os.environ if env is None else env
        self.env = {k: v for k, v in env.items() if PASSED_ENV.match(k)}
        self.entrypoint = entrypoint
        self._client = None

    @property
    def client(self):
        """Ray's job client, made on first use (it asks the cluster for its version): a backend starts
        while its cluster is down, and says so when a job is asked for."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            # Ray's token auth (default since 2.60): the token is sent ourselves, as Ray reads its own
            # RAY_AUTH_MODE only once per process.
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            try:
                self._client = JobSubmissionClient(self.address, headers=headers)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterError(f"the Ray job server at {self.address} cannot be reached: {exc}") from exc
        return self._client

    def _jobs(self, project: str) -> list:
        prefix = f"labeler-p{project}-"
        try:
            listed = self.client.list_jobs()
        except (ConnectionError, RuntimeError) as exc:
            raise ClusterError(f"the Ray job server at {self.address} cannot be reached: {exc}") from exc
        jobs = [j for j in listed if (j.submission_id or "").startswith(prefix)]
        return sorted(jobs, key=lambda j: int(j.submission_id[len(prefix):]))

    def state(self, project: str) -> dict:
        """The latest job of ``project`` in labeler's job vocabulary (``{"status": "none"}`` if none)."""
        jobs = self._jobs(check_project(project))
        if not jobs:
            return {"status": "none"}
        j = jobs[-1]
        return {"status": _STATUS.get(str(j.status), str(j.status).lower()), "job_id": j.submission_id,
                "trigger": (j.metadata or {}).get("trigger"), "kind": (j.metadata or {}).get("kind"),
                "error": j.message if str(j.status) in ("FAILED", "STOPPED") else None,
                "queued_at": (j.start_time or 0) / 1000 or None, "finished": (j.end_time or 0) / 1000 or None}

    def submit(self, project: str, trigger: str, kind: str = "train", env: Mapping[str, str] | None = None,
               attempts: int = 5, agent_wait_s: float = 60) -> dict:
        """Start a job for ``project`` unless one is queued or running (then its state, ``refused: True``).

        ``env``: settings for this job on top of the passed environment (the project's Label Studio)."""
        project = check_project(project)
        tries, agent_deadline = 0, time.monotonic() + agent_wait_s
        while tries < attempts:
            jobs = self._jobs(project)
            if jobs and str(jobs[-1].status) in ACTIVE:
                return {**self.state(project), "refused": True}
            sid = f"labeler-p{project}-{len(jobs) + 1}"
            try:
                self.client.submit_job(entrypoint=self.entrypoint(project, kind), submission_id=sid,
                                       runtime_env={"env_vars": {**self.env, **(env or {})}},
                                       metadata={"project": project, "kind": kind, "trigger": trigger[:200]})
            except RuntimeError as exc:
                if "No available agent" in str(exc) and time.monotonic() < agent_deadline:
                    time.sleep(1.0)  # a cluster just started: its job agent comes up a little after the head
                    continue
                if "already exists" not in str(exc):
                    raise ClusterError(f"the Ray job server at {self.address} refused job {sid}: {exc}") from exc
                log.info("job %s was submitted by another replica", sid)  # it won this attempt: look again
                tries += 1
                continue
            return {**self.state(project), "refused": False}
        raise ClusterError(f"could not submit a job for project {project}: the job ids kept changing")

    def wait(self, project: str, timeout: float = 600) -> dict:
        """Block until the project's latest job is neither queued nor running."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.state(project)
            if st["status"] not in ("queued", "running"):
                return st
            time.sleep(0.5)
        raise TimeoutError(f"Ray job of project {project} still running after {timeout} s")
