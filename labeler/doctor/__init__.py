"""`labeler doctor`: is everything labeler needs there? One :class:`Check` per question, each "ok" or what
is wrong and the command or setting that fixes it.

Label Studio (:mod:`labeler.doctor.studio`): reachable and its version, the token and its kind, per project
the label config, the ML backend connected at this backend's URL and reached by Label Studio, its webhook
with the backend's credentials, and the fast-import flag. This machine (:mod:`labeler.doctor.local`): the
zero-shot model, free disk, the Ray cluster. The backend serves the same checks to admins as JSON
(``GET /admin/doctor``, :mod:`ml_backend.doctor`), without fetching any URL Label Studio hands over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labeler.config import Settings
from labeler.doctor.result import Check, failed, passed, warned

__all__ = ["Check", "Options", "failed", "passed", "project_checks", "run_checks", "warned"]


@dataclass(frozen=True)
class Options:
    backend_url: str | None = None   # this backend's URL as Label Studio calls it (LABELER_BACKEND_URL)
    ls_user: str | None = None       # a Label Studio login, to read its feature flags
    ls_password: str | None = None
    probe: bool = True               # GET the backends' /health and probe /webhook (the CLI; never the service)
    load_model: bool = False         # load the zero-shot model (multi-GB for the real one)
    min_free_gb: float = 10.0


def project_checks(studio, project: int, own_url: str | None, credentials: dict[str, str],
                   required: bool | None, probe: bool) -> list[Check]:
    """Label config, ML backend and webhook of one project."""
    from labeler.doctor import studio as ls
    from labeler.errors import StudioError

    checks = [ls.label_config(studio, project)]
    try:
        backends = ls.ml_backends(studio, project)
        checks.append(ls.ml_backend(project, backends, own_url, probe))
        urls = [b["url"] for b in ls.ours(backends, own_url)]
        checks.append(ls.webhook(studio, project, urls, credentials, required))
    except StudioError as exc:
        checks.append(failed(f"project {project} ML backend", str(exc), "fix the Label Studio checks first"))
    return checks


def studio_checks(settings: Settings, projects: Sequence[int], opts: Options) -> list[Check]:
    """Label Studio, the token, then each project (skipped, and said so, while either fails)."""
    from labeler.doctor import studio as ls
    from labeler.studio.client import Studio
    from labeler.studio.tasks import webhook_credentials

    url = settings.label_studio_url
    checks = [ls.studio_version(url)]
    studio = None
    if checks[0].ok and url:
        if settings.label_studio_api_key:
            studio = Studio(url, settings.label_studio_api_key, timeout=ls.TIMEOUT_S * 3)
        checks.append(ls.studio_token(studio))
    if studio is None or not all(c.ok for c in checks):
        return [*checks, warned("projects", "not checked: fix the Label Studio checks above first")]
    if not projects:
        checks.append(warned("projects", "none to check", "pass --project ID (or set LABELER_PROJECT)"))
    credentials = webhook_credentials(settings.webhook_secret, settings.basic_auth_user, settings.basic_auth_pass)
    own = opts.backend_url or settings.public_url
    required = ls.webhook_needs_credentials(own) if own and opts.probe else None
    if required is None and credentials:
        required = True
    for project in projects:
        checks += project_checks(studio, project, own, credentials, required, opts.probe)
    checks.append(ls.import_flag(url, opts.ls_user, opts.ls_password))
    return checks


def local_checks(settings: Settings, opts: Options) -> list[Check]:
    from labeler.doctor import local

    places = {"MODEL_DIR": settings.model_dir, "embedding cache": settings.model_dir / "cache"}
    if settings.zeroshot_model and not Path(settings.zeroshot_model).expanduser().is_dir():
        places["hub cache"] = local.hub_cache_dir()
    return [local.zeroshot_model(settings, load=opts.load_model), *local.disk_space(places, opts.min_free_gb),
            local.ray_cluster(settings)]


def run_checks(settings: Settings, projects: Sequence[int], opts: Options | None = None) -> list[Check]:
    """Every check, in the order to fix them: Label Studio first, then this machine."""
    opts = opts or Options()
    return [*studio_checks(settings, projects, opts), *local_checks(settings, opts)]
