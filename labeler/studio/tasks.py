"""Projects in Label Studio: tasks and their labels, predictions, model versions, tabs, the model card."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests

from labeler.errors import StudioError
from labeler.ids import PROJECT_RE
from labeler.labelconfig import LabelConfig, parse_label_config
from labeler.studio.client import Studio

log = logging.getLogger(__name__)


def project_config(studio: Studio, project: int) -> LabelConfig:
    return parse_label_config(studio.projects.get(id=project).label_config or "")


# What bulk pre-annotation needs of a task: about 5x faster to list than ``fields=all`` (1,190 vs 245 tasks/s).
NARROW_FIELDS = "id,data,predictions_model_versions,total_annotations"


def prediction_versions(task: dict) -> set[str]:
    """The model versions of a task's predictions, from a narrow listing or a full one.

    Label Studio sends ``predictions_model_versions`` as one string (``"v1,v2"`` on SQLite,
    ``"v1, v2"`` on PostgreSQL), cut at 500 characters: a cut string drops its last, partial
    name, so a version is never matched by a prefix of itself.
    """
    if "predictions" in task:
        return {str(p.get("model_version")) for p in task.get("predictions") or [] if isinstance(p, dict)}
    raw = task.get("predictions_model_versions") or ""
    if isinstance(raw, list):
        return {str(v) for v in raw}
    names = [v.strip() for v in str(raw).split(",")]
    if len(raw) >= 500:
        names = names[:-1]
    return {v for v in names if v}


def iter_tasks(studio: Studio, project: int, page_size: int = 500,
               only_annotated: bool = False, narrow: bool = False) -> Iterator[dict]:
    """Every task of ``project`` as a plain dict (annotations and predictions included), paged.

    ``narrow``: only :data:`NARROW_FIELDS` (``predictions_model_versions`` instead of the predictions).
    """
    page = 1
    while True:
        params = {"project": project, "page": page, "page_size": page_size, "fields": "all"}
        if narrow:  # with fields=all: without it Label Studio leaves predictions_model_versions empty
            params["include"] = NARROW_FIELDS
        resp = studio.request("GET", "api/tasks/", params=params)
        if resp.status_code == 404:  # past the last page
            return
        if resp.status_code >= 400:
            raise StudioError(f"listing tasks of project {project} failed: HTTP {resp.status_code} {resp.text[:200]}")
        tasks = resp.json().get("tasks", [])
        for t in tasks:
            if not only_annotated or t.get("total_annotations", 0) > 0:
                yield t
        if len(tasks) < page_size:
            return
        page += 1


def annotation_labels(annotation: dict, config: LabelConfig) -> tuple[str, ...] | None:
    """The chosen classes of one annotation (config order), or None if it has no usable label.

    Single choice: exactly one known class, else None (cancelled, empty, off-config).
    Multi-label: the set of ticked classes; a submitted (not cancelled) annotation that
    ticks none is the label "none of these", ``()``. A class not in the config makes it None.
    """
    if annotation.get("was_cancelled"):
        return None
    chosen: list[str] = []
    for r in annotation.get("result") or []:
        if r.get("type") == "choices" and r.get("from_name") == config.from_name:
            chosen += (r.get("value") or {}).get("choices") or []
    if config.multiple:
        return tuple(c for c in config.classes if c in chosen) if set(chosen) <= set(config.classes) else None
    return (chosen[0],) if len(chosen) == 1 and chosen[0] in config.classes else None


def join_labels(labels: Sequence[str]) -> str:
    """A label set as one text, ``"a;b"`` (the export's ``labels`` column; ``""`` is none of them)."""
    return ";".join(labels)


def annotation_label(annotation: dict, config: LabelConfig) -> str | None:
    """The chosen class of one annotation (multi-label: the classes joined, ``"a;b"``), or None."""
    labels = annotation_labels(annotation, config)
    return None if labels is None else join_labels(labels)


def pick_label(annotations: Sequence[dict], config: LabelConfig) -> str | None:
    """The label of a task with possibly several annotations (see :func:`winning_annotation`)."""
    winner = winning_annotation(annotations, config)
    return annotation_label(winner, config) if winner is not None else None


def winning_annotation(annotations: Sequence[dict], config: LabelConfig) -> dict | None:
    """The annotation whose label a task takes (training, review and export all use this rule).

    Rule: skip cancelled and empty annotations; if ground-truth annotations
    exist, only they count; then the majority label wins, and a tie goes to
    the most recently updated annotation among the tied labels. The winner is
    the most recent annotation with the winning label. Multi-label: a label is
    the whole set of ticked classes (two annotators agree when their sets do).
    """
    valid = [(a, lab) for a in annotations if (lab := annotation_labels(a, config)) is not None]
    if any(a.get("ground_truth") for a, _ in valid):
        valid = [(a, lab) for a, lab in valid if a.get("ground_truth")]
    if not valid:
        return None
    counts: dict[tuple[str, ...], int] = {}
    for _, lab in valid:
        counts[lab] = counts.get(lab, 0) + 1
    top = max(counts.values())
    tied = {lab for lab, c in counts.items() if c == top}
    return max((a for a, lab in valid if lab in tied),
               key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


@dataclass
class Labelled:
    task_id: int
    url: str
    label: str                    # multi-label: the classes joined, "a;b" ("" for none of them)
    labels: tuple[str, ...] = ()  # the chosen classes (single choice: the one class)
    confidence: float | None = None  # the consensus's (labeler.studio.team); None: not estimable
    annotators: tuple[str, ...] = ()  # who labelled the task


def labelled_tasks(studio: Studio, project: int, config: LabelConfig,
                   ) -> tuple[list[Labelled], int, list[tuple[int, str]]]:
    """(tasks with a usable label, count of annotated tasks skipped as cancelled/empty,
    (task id, image URL) of the tasks nobody has annotated)."""
    out, skipped, unlabelled = [], 0, []
    for t in iter_tasks(studio, project):
        ref = config.image_ref(t)
        url = ref if isinstance(ref, str) else ""  # image references are URLs (or paths)
        if not t.get("total_annotations", 0):
            if url:
                unlabelled.append((t["id"], url))
            continue
        winner = winning_annotation(t.get("annotations") or [], config)
        labels = annotation_labels(winner, config) if winner is not None else None
        if labels is None or not url:
            skipped += 1
            continue
        out.append(Labelled(t["id"], url, join_labels(labels), labels))
    return out, skipped, unlabelled


def set_model_version(studio: Studio, project: int, version: str, retries: int = 10) -> bool:
    """Make the project's ``model_version`` equal ``version`` so score sorting uses its predictions.

    Label Studio refuses a version that has no stored predictions yet (400),
    which happens right after /predict answers: retry for a while.
    """
    for attempt in range(retries):
        try:
            if studio.projects.get(id=project).model_version == version:
                return True
            studio.projects.update(id=project, model_version=version)
            return True
        except Exception as exc:  # noqa: BLE001 - the SDK raises ApiError and httpx errors
            log.debug("setting model_version=%s on project %s: %s (try %d)", version, project, exc, attempt)
            time.sleep(1.0)
    log.warning("could not set project %s model_version to %s", project, version)
    return False


def import_predictions(studio: Studio, project: int, predictions: Sequence[dict], replace: bool = True) -> None:
    """Write predictions (each with ``task``) in one request.

    ``replace``: first delete the predictions those tasks already hold, in one data-manager
    action, so each task keeps one prediction (deleting old ones one by one afterwards costs
    a request per prediction: hours at 50,000 tasks).
    """
    if not predictions:
        return
    if replace:
        ids = sorted({int(p["task"]) for p in predictions})
        studio.actions.create(id="delete_tasks_predictions", project=project,
                          selected_items={"all": False, "included": ids})
    studio.projects.import_predictions(id=project, request=list(predictions))  # type: ignore[arg-type]  # dicts the API takes


def ensure_view(studio: Studio, project: int, title: str, ordering: Sequence[str],
                filters: dict | None = None, hidden: dict | None = None, numeric: Sequence[str] = ()) -> int:
    """Create (or update) a saved Data Manager tab ``title``; returns its id.

    ``hidden`` is Label Studio's ``hiddenColumns`` (``{"explore": [...], "labeling": [...]}``).
    Without it Label Studio computes only the ordering and filter fields, so every other
    column of the tab (the model's answer, annotations) reads blank. ``numeric``: data columns
    (``tasks:data.x``) to order as numbers, not text.
    """
    data = {"title": title, "ordering": list(ordering),
            "filters": filters or {"conjunction": "and", "items": []},
            "hiddenColumns": hidden or QUEUE_HIDDEN_COLUMNS, "columnsWidth": QUEUE_COLUMN_WIDTHS}
    if numeric:
        data["columnsDisplayType"] = {c: "Number" for c in numeric}
    for view in studio.views.list(project=project):
        if (view.data or {}).get("title") == title:
            studio.views.update(id=view.id, project=project, data=data)
            return view.id
    return studio.views.create(project=project, data=data).id


# The model's answer as a plain column: the chosen class ("a;b" multi-label, "(none)" for none ticked),
# written into each task's data by the queue's publish (labeler.studio.queue.write_answers), since Label
# Studio shows a prediction only as its raw JSON ("[{from_name: choice, ... value: {choices: [closed]}}]").
ANSWER_FIELD = "labeler_answer"
ANSWER_COLUMN = f"tasks:data.{ANSWER_FIELD}"
NO_ANSWER = "(none)"

# Columns of Label Studio's own tabs that the queue hides. What stays visible, left to right: ID, the
# annotation count, the prediction score (the stored confidence), then the data columns (Label Studio
# puts them last, in the order they first appeared): the image, the model's answer (and in "Next to
# label" the rank), so score, image and answer sit side by side. Hidden: the raw JSON of predictions
# and annotations, and columns a fresh project leaves empty (Completed, Annotated by); the Columns menu
# shows any of them again. The model version is hidden: after a refresh every task holds only the
# serving version's prediction (see delete_stale_predictions), and the model card names that version.
# The narrow column at the right with a "{}" button is Label Studio's "View Task Source", which its
# Data Manager always adds (1.23: no tab setting hides it).
_ALWAYS_HIDDEN = ["tasks:inner_id", "tasks:annotations_ids", "tasks:predictions_model_versions",
                  "tasks:file_upload", "tasks:storage_filename", "tasks:created_at", "tasks:updated_at",
                  "tasks:updated_by", "tasks:avg_lead_time", "tasks:draft_exists",
                  "tasks:cancelled_annotations", "tasks:total_predictions", "tasks:completed_at",
                  "tasks:annotators", "tasks:annotations_results", "tasks:predictions_results",
                  "tasks:data.labeler_priority"]  # the queue's rank: shown in "Next to label" only
QUEUE_HIDDEN_COLUMNS = {
    "explore": _ALWAYS_HIDDEN,
    "labeling": _ALWAYS_HIDDEN + ["tasks:id"],
}

QUEUE_COLUMN_WIDTHS = {"tasks:id": 70, "tasks:total_annotations": 60, "tasks:predictions_score": 140,
                       ANSWER_COLUMN: 160}


UNCERTAINTY_VIEW = "Least confident first"


def uncertainty_view(studio: Studio, project: int) -> int:
    """The "Least confident first" tab, and uncertainty sampling for "Label All Tasks"."""
    vid = ensure_view(studio, project, UNCERTAINTY_VIEW, ["tasks:predictions_score"])
    studio.projects.update(id=project, sampling="Uncertainty sampling")
    return vid


def delete_stale_predictions(studio: Studio, project: int, keep_version: str) -> int:
    """Delete predictions of other model versions from tasks that hold one of ``keep_version``.

    Run after a refresh, so each task shows one prediction, the serving version's. A task
    whose refresh failed keeps its older prediction rather than none. Returns how many
    predictions were deleted.
    """
    predictions = studio.predictions.list(project=project)
    current = {p.task for p in predictions if p.model_version == keep_version}
    stale = [p.id for p in predictions if p.model_version != keep_version and p.task in current]
    for pid in stale:
        studio.predictions.delete(id=pid)
    if stale:
        log.info("project %s: deleted %d predictions of versions other than %s", project, len(stale), keep_version)
    return len(stale)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def model_card_text(serving: str, serving_meta: dict | None, job: dict, admin_url: str | None,
                    preannotation: dict | None = None) -> tuple[str, str]:
    """(title, description) of Label Studio's model card.

    The card shows only the title, so it carries the essentials: what serves, a background
    pre-annotation's progress while it runs (``preannotation``: its job state), and how the last
    training ended. The description (the card's Edit dialog) has the details and the admin page.
    """
    m = (serving_meta or {}).get("metrics") or {}
    if "subset_accuracy" in m:  # multi-label
        title = f"labeler · serving {serving} (macro-F1 {_fmt(m.get('macro_f1'))})"
        lines = [f"Serving {serving}: held-out macro-F1 {_fmt(m.get('macro_f1'))}, micro-F1 {_fmt(m.get('micro_f1'))}, "
                 f"subset accuracy {_fmt(m.get('subset_accuracy'))}, Hamming loss {_fmt(m.get('hamming_loss'))}."]
    else:
        title = f"labeler · serving {serving}" + (f" (accuracy {_fmt(m.get('accuracy'))})" if m else "")
        lines = [f"Serving {serving}" + (f": held-out accuracy {_fmt(m.get('accuracy'))}, EER {_fmt(m.get('eer'))}, "
                                         f"ROC AUC {_fmt(m.get('roc_auc'))}." if m else " (the zero-shot model).")]
    title, lines = _preannotation_text(title, lines, preannotation or {})
    status = job.get("status")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(job["finished"])) if job.get("finished") else ""
    if status == "failed":
        error = str(job.get("error") or "")
        title += f" · last training FAILED: {error.split(': ', 1)[-1]}"
        lines.append(f"Last training FAILED {when}: {error}")
    elif status == "done" and job.get("version"):
        verdict = "promoted" if job.get("promoted") else "NOT promoted"
        title += f" · last training: {job['version']} {verdict}"
        lines.append(f"Last training {when}: {job['version']} {verdict} ({job.get('reason') or ''}).")
    elif status in {"queued", "running"}:
        title += f" · training {status}"
        lines.append(f"Training {status}: {job.get('step') or ''}")
    if admin_url:
        lines.append(f"Versions, metrics, learning curve, rollback: {admin_url}")
    return (title if len(title) <= 160 else title[:159] + "…"), "\n".join(lines)[:2000]


def _preannotation_text(title: str, lines: list[str], job: dict) -> tuple[str, list[str]]:
    """The card's words for a background pre-annotation: "pre-annotating: 3,200 of 10,000" while it runs."""
    status, p = job.get("status"), job.get("progress") or {}
    if status == "queued" or (status == "running" and not p):
        title += f" · pre-annotating {job.get('requested') or 0:,} tasks: starting"
        lines.append(f"Pre-annotating {job.get('requested') or 0:,} tasks in the background: starting.")
    elif status == "running":
        title += f" · pre-annotating: {p.get('done', 0):,} of {p.get('total', 0):,}"
        if p.get("left"):
            title += f", about {p['left']} left"
        lines.append(f"Pre-annotating in the background: {p.get('done', 0):,} of {p.get('total', 0):,} tasks; "
                     f"{p.get('estimate') or ''}.")
    elif status == "failed":
        title += " · pre-annotation FAILED"
        lines.append(f"Background pre-annotation FAILED: {job.get('error') or ''}")
    elif status == "done" and job.get("finished"):
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(job["finished"]))
        lines.append(f"Background pre-annotation finished {when}: {job.get('predicted') or 0:,} tasks pre-annotated, "
                     f"{job.get('failed') or 0:,} failed.")
    return title, lines


def update_model_card(studio: Studio, project: int, title: str, description: str,
                      basic_auth: tuple[str, str] | None = None) -> int:
    """Set title and description of the labeler ML backend(s) connected to ``project``.

    With one backend connected it is ours; with several, those whose title starts with
    "labeler". Label Studio re-validates the connection on every change (health and setup
    calls, 500 without ``url`` and ``project``), so a backend behind basic auth needs
    ``basic_auth`` (the password is write-only in the API). Returns how many cards were updated.
    """
    backends = studio.ml.list(project=project)
    if len(backends) > 1:
        backends = [b for b in backends if (b.title or "").lower().startswith("labeler")]
    auth = ({"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
            if basic_auth else {})
    for b in backends:
        studio.ml.update(id=b.id, url=b.url, project=project, title=title, description=description, **auth)
    return len(backends)


def report_to_model_card(studio: Studio | None, project: str, job: dict, predictor,
                         preannotation: dict | None = None) -> None:
    """After a training job: put the serving version and the job's outcome on the model card (and a
    background pre-annotation's progress, ``preannotation``, its job state).

    Never raises: the card is a convenience, the job's state is the record.
    """
    if studio is None or not PROJECT_RE.fullmatch(str(project)):
        return
    try:
        registry, settings = predictor.registry, predictor.settings
        serving = registry.current(project)
        meta = registry.meta(project, serving) if serving else None
        backends = studio.ml.list(project=int(project))
        admin_url = f"{backends[0].url.rstrip('/')}/dashboard" if len(backends) == 1 and backends[0].url else None
        auth = (settings.basic_auth_user, settings.basic_auth_pass or "") if settings.basic_auth_user else None
        title, description = model_card_text(serving or "zero-shot", meta, job, admin_url, preannotation)
        update_model_card(studio, int(project), title, description, auth)
    except Exception as exc:  # noqa: BLE001 - the SDK raises ApiError and httpx errors
        log.warning("could not update the model card of project %s: %s", project, exc)


# The header that carries LABELER_WEBHOOK_SECRET on Label Studio's webhook to the backend.
WEBHOOK_SECRET_HEADER = "X-Labeler-Webhook-Secret"


def webhook_credentials(secret: str | None, user: str | None, password: str | None) -> dict[str, str]:
    """The headers the backend's webhook needs (the secret, else basic auth); empty when it needs none."""
    if secret:
        return {WEBHOOK_SECRET_HEADER: secret}
    if user:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()}
    return {}


def same_backend_url(a: str, b: str) -> bool:
    """True when two URLs name the same ML backend (host, port and path; not the scheme)."""
    return _url_key(a) == _url_key(b)


def secure_backend_webhooks(studio: Studio, project: int, headers: dict[str, str], own_url: str) -> tuple[int, int]:
    """Add ``headers`` (the backend's webhook credentials) to the webhook Label Studio created for this
    backend, the project's ML backend at ``own_url`` (it creates it without credentials); returns (such
    webhooks, updated). Another ML backend's webhook never gets them: whoever may edit the project can
    add an ML backend of their own."""
    own = _url_key(own_url)
    targets = {f"{(ml.url or '').rstrip('/')}/webhook" for ml in studio.ml.list(project=project)
               if _url_key(ml.url or "") == own}
    found = updated = 0
    for hook in studio.webhooks.list(project=str(project)):
        if hook.url not in targets:
            continue
        found += 1
        have = dict(hook.headers or {}) if isinstance(hook.headers, dict) else {}
        if any(have.get(k) != v for k, v in headers.items()):
            studio.webhooks.update(id=hook.id, headers={**have, **headers})
            updated += 1
    return found, updated


def _url_key(url: str) -> str:
    """Host, port and path of a URL in lower case, default ports and trailing slash dropped; not the scheme
    (a proxy that ends TLS hands the backend http:// for Label Studio's https://)."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc.lower().rpartition("@")[2]
    for default in (":80", ":443"):
        netloc = netloc.removesuffix(default)
    return f"{netloc}{parts.path.rstrip('/')}"


def upload_images(ls_url: str, token: str, project: int, files: list[Path], chunk: int = 50) -> int:
    """Multipart upload (``/data/upload/...`` URLs); one form field per file or only one is kept."""
    n = 0
    for i in range(0, len(files), chunk):
        part = files[i:i + chunk]
        payload = {f"file{j}": (p.name, p.read_bytes()) for j, p in enumerate(part)}
        resp = requests.post(f"{ls_url}/api/projects/{project}/import", files=payload,
                             headers={"Authorization": f"Token {token}"}, timeout=120)
        resp.raise_for_status()
        n += resp.json().get("task_count", len(part))
    return n


class ProjectLike(Protocol):
    @property
    def id(self) -> int | None: ...


def created_id(project: ProjectLike) -> int:
    """The id of a project Label Studio just created (the SDK types every id as optional)."""
    if project.id is None:
        raise StudioError("Label Studio created a project but returned no id")
    return project.id
