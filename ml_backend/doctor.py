"""`labeler doctor`'s checks as the backend sees them, for admins (``GET /admin/doctor``): its own
settings, the model it loaded, and the Label Studio of each project it knows.

Nothing is fetched on a request's say-so: the Label Studio URLs are the configured or verified ones
(:mod:`ml_backend.state`), ML backend URLs are only compared with this backend's own (whether Label
Studio reaches them is Label Studio's answer), and no backend's ``/health`` or ``/webhook`` is probed.
"""

from __future__ import annotations

from labeler.doctor import Check, local, project_checks, warned
from labeler.doctor import studio as ls
from labeler.studio.tasks import webhook_credentials

from .state import BackendState

SETUP_FIX = ("it comes with Label Studio's next /setup (open the project's Settings -> Model), or set "
             "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY on the backend")


def studio_project_checks(st: BackendState) -> list[Check]:
    """Each known project's Label Studio (once per Label Studio), label config, ML backend and webhook."""
    s = st.settings
    credentials = webhook_credentials(s.webhook_secret, s.basic_auth_user, s.basic_auth_pass)
    projects = st.predictor.registry.projects()
    checks: list[Check] = []
    studios: dict[str, bool] = {}  # Label Studio URL -> reachable with its token
    for project in projects:
        studio = st.studio(project)
        if studio is None:
            checks.append(warned(f"project {project}", "no Label Studio connection yet", SETUP_FIX))
            continue
        if studio.url not in studios:
            found = [ls.studio_version(studio.url), ls.studio_token(studio)]
            studios[studio.url] = all(c.ok for c in found)
            checks += found
        if studios[studio.url]:
            checks += project_checks(studio, int(project), st.own_url(project) or None, credentials,
                                     required=bool(credentials), probe=False)
    if not projects:
        checks.append(warned("projects", "none known yet", "connect this backend to a project in Label Studio "
                             "(Settings -> Model -> Connect model)"))
    url = s.label_studio_url or next(iter(studios), None)
    return [*checks, ls.import_flag(url, None, None)]


def backend_checks(st: BackendState, min_free_gb: float = 10.0) -> list[Check]:
    """Every check the backend can make without fetching what a request names."""
    p, s = st.predictor, st.settings
    model = local.loaded_model(p.ready, p.scorer_error, p.scorer if p.ready else None, s.zeroshot_model)
    places = {"MODEL_DIR": s.model_dir, "embedding cache": s.model_dir / "cache"}
    return [*studio_project_checks(st), model, *local.disk_space(places, min_free_gb), local.ray_cluster(s)]
