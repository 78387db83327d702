"""Bulk pre-annotation on a Ray cluster (Ray Data): ``labeler preannotate --engine ray``.

The same steps as :mod:`labeler.studio.preannotate`, spread over a cluster:

1. the driver lists the tasks narrowly (id, data, the model versions of their
   predictions) and keeps those without a prediction of the serving version
   (so a killed run resumes where it stopped);
2. CPU tasks download and decode the images (:meth:`Predictor.fetch`: same
   fetch policy, byte and pixel caps, image store);
3. scoring actors, each holding the model once (a GPU each where the cluster
   has GPUs), embed and score them (:meth:`Predictor.embed`,
   :meth:`Predictor.score_items`, :func:`to_prediction`);
4. a few importer actors write the predictions to Label Studio in large batches
   (Label Studio, not the GPU, is the ceiling: see README "Scaling out").

Workers must see the driver's ``MODEL_DIR`` at the same path (a shared volume):
the registry says which version serves, the caches live under it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import Image
from tqdm.auto import tqdm

from labeler.config import Settings
from labeler.distributed import require_ray
from labeler.errors import SettingsError
from labeler.models.classifiers import Sample
from labeler.models.encoders import serving_encoder
from labeler.models.openregistry import registry_for
from labeler.models.predictor import Predictor, Scored, project_key, to_prediction
from labeler.models.registry import Registry
from labeler.models.strategies import FEATURE_DIM, encoder_features
from labeler.studio.client import Connection, Studio
from labeler.studio.preannotate import PreannotateBusy, Report, finish, tasks_to_predict
from labeler.studio.queue import Recorder, queue_scores
from labeler.studio.tasks import (
    import_predictions,
    project_config,
)

log = logging.getLogger(__name__)

# CPU reservations: a scoring actor's work is on its GPU, an importer waits on HTTP, a download/decode
# task mostly waits on the network. Together (one scorer, two importers, one fetch task) they fit a
# one-CPU node: reserving more deadlocks there, the actors holding every CPU while fetches queue.
SCORER_CPUS = 0.25
IMPORTER_CPUS = 0.1
FETCH_CPUS = 0.5
_EMPTY = np.zeros((0, 0, 3), dtype=np.uint8)
_FETCHERS: dict[tuple, tuple[Predictor, Connection]] = {}  # one per worker process, reused across batches


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # element by element: numpy would broadcast same-shaped arrays
        out[i] = v
    return out


def fetch_batch(batch: dict[str, np.ndarray], settings: Settings, url: str, token: str) -> dict[str, np.ndarray]:
    """Download and decode one batch of task images (a CPU task); failures stay per image.

    Images travel as RGB arrays: every consumer (BLIP-2, the CNN, the queue's
    ImageNet features) converts to RGB first, so scores are those of the in-process path.
    """
    key = (settings, url, token)
    if key not in _FETCHERS:
        _FETCHERS[key] = (Predictor(settings), Connection(url, token))
    predictor, conn = _FETCHERS[key]
    refs = [json.loads(r) for r in batch["ref"]]
    images: list[np.ndarray] = []
    keys: list[str | None] = []
    errors: list[str] = []
    for it in predictor.fetch(refs, conn):
        if it.sample is None:
            images.append(_EMPTY)
            keys.append("")
            errors.append(it.error or "unknown error")
        else:
            images.append(np.asarray(it.sample.image.convert("RGB")))
            keys.append(it.key)
            errors.append("")
    return {"id": batch["id"], "image": _objects(images), "key": np.array(keys, dtype=object),
            "error": np.array(errors, dtype=object)}


class ScoreActor:
    """Holds the project's serving model once; scores batches of decoded images."""

    def __init__(self, settings: Settings, project: str, config_xml: str, version: str) -> None:
        from labeler.labelconfig import parse_label_config

        self.predictor = Predictor(settings)
        self.predictor.load_scorer()
        self.project, self.version = project, version
        self.config = parse_label_config(config_xml)
        self.encoder = serving_encoder(settings, self.predictor.registry, project)  # as Recorder's: one feature space

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [Scored(error=str(err)) if err else
                 Scored(sample=Sample(Image.fromarray(np.asarray(img, dtype=np.uint8), "RGB")), key=str(k))
                 for img, k, err in zip(batch["image"], batch["key"], batch["error"])]
        self.predictor.embed(items)
        version, items = self.predictor.score_items(self.project, items, self.config)
        n_cls = len(self.config.classes)
        preds, errors = [], []
        proba = np.full((len(items), n_cls), np.nan, dtype=np.float32)
        for i, (tid, it) in enumerate(zip(batch["id"], items)):
            if version != self.version:  # promoted mid-run: never write a prediction of another version
                it.proba, it.error = None, f"the serving model changed to {version} during the run: run again"
            if it.proba is None:
                preds.append("")
                errors.append(it.error or "unknown error")
                continue
            proba[i] = queue_scores(it.proba, it.thresholds)
            preds.append(json.dumps({"task": int(tid), **to_prediction(
                it.proba, self.config, version, self.predictor.settings.uncertainty, it.thresholds)}))
            errors.append("")
        # What the labelling queue needs per task (labeler.studio.queue.Recorder.add), computed here on the GPU.
        has = np.array([it.sample is not None for it in items])
        feats = np.zeros((len(items), FEATURE_DIM), dtype=np.float16)
        if has.any():
            feats[has] = encoder_features([it.sample for it in items if it.sample is not None],
                                          self.encoder[1] if self.encoder else None)
        return {"id": batch["id"], "prediction": np.array(preds, dtype=object),
                "error": np.array(errors, dtype=object), "proba": proba, "features": feats, "has_sample": has}


class ImportActor:
    """Writes predictions to Label Studio, one request per batch."""

    def __init__(self, url: str, token: str, project: int) -> None:
        self.studio, self.project = Studio(url, token), project

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import_predictions(self.studio, self.project, [json.loads(p) for p in batch["prediction"] if p])
        return {k: v for k, v in batch.items() if k != "prediction"}


def _serving_version(settings: Settings, project: str, config_xml: str) -> tuple[str, str | None]:
    """The version the scoring actors will write (it names the model, so it is asked where the model loads)."""
    from labeler.labelconfig import parse_label_config

    p = Predictor(settings)
    p.load_scorer()
    return p.model_version(project, parse_label_config(config_xml)), p.scorer_error


def preannotate_ray(studio: Studio, project: int, settings: Settings,
                    only_missing: bool = True, batch_size: int = 64, import_batch: int = 500,
                    scorers: int | None = None, importers: int = 2, progress: bool = True,
                    max_tasks: int | None = None, wait_s: float = 600) -> Report:
    """Pre-annotate ``project`` on the Ray cluster at ``RAY_ADDRESS`` (or the one already initialised;
    neither: a local one).

    ``scorers``: scoring actors (default: one per GPU of the cluster, else one).
    Same report, same lock and same end steps (project version, views,
    stale predictions, labelling queue) as :func:`labeler.studio.preannotate.preannotate`.
    """
    require_ray()
    import ray

    if not ray.is_initialized():
        if settings.ray_address and not settings.ray_driver_address:
            raise SettingsError(f"RAY_ADDRESS={settings.ray_address} is a Ray job server, which a driver cannot "
                                "join: set RAY_ADDRESS to the head's cluster address (head:6379) and "
                                "RAY_API_SERVER_ADDRESS to the job server")
        ray.init(address=settings.ray_driver_address, log_to_driver=False)
    pkey = project_key(project)
    lock = FileLock(Registry(settings.model_dir).project_dir(pkey, create=True) / "preannotate.lock")
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise PreannotateBusy(f"another pre-annotation of project {project} is still running") from None
    try:
        return _run(ray, studio, project, pkey, settings, only_missing, batch_size, import_batch,
                    scorers, importers, progress, max_tasks)
    finally:
        lock.release()


def _run(ray, studio, project, pkey, settings, only_missing, batch_size, import_batch, scorers, importers,
         progress, max_tasks) -> Report:
    config = project_config(studio, project)
    xml = studio.projects.get(id=project).label_config
    gpus = int(ray.cluster_resources().get("GPU", 0))
    gpu_each = 1 if gpus else 0
    scorers = scorers or max(gpus, 1)
    # Workers resolve the model folder and MODEL_DIR as given; relative paths would differ per worker.
    settings = replace(settings, model_dir=Path(settings.model_dir).resolve())
    version, err = ray.get(ray.remote(num_gpus=gpu_each, num_cpus=SCORER_CPUS)(_serving_version)
                           .remote(settings, pkey, xml))
    if err:
        log.warning(err)
    report = Report(version)
    recorder = Recorder(settings.model_dir, project, len(config.classes), config.multiple,
                        serving_encoder(settings, registry_for(settings), project))
    todo = tasks_to_predict(studio, project, version, only_missing, max_tasks, recorder, report)
    bar = tqdm(total=len(todo), desc=f"pre-annotating project {project} on Ray", unit="task", disable=not progress)
    if todo:
        url, token = studio.conn.base_url, studio.conn.token
        ds = ray.data.from_items([{"id": int(t["id"]), "ref": json.dumps(config.image_ref(t))} for t in todo])
        ds = ds.map_batches(fetch_batch, batch_size=batch_size, num_cpus=FETCH_CPUS,
                            fn_kwargs={"settings": settings, "url": url, "token": token})
        ds = ds.map_batches(ScoreActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=scorers),
                            num_gpus=gpu_each,
                            num_cpus=SCORER_CPUS,
                            fn_constructor_kwargs={"settings": settings, "project": pkey, "config_xml": xml,
                                                   "version": version})
        ds = ds.map_batches(ImportActor, batch_size=import_batch, compute=ray.data.ActorPoolStrategy(size=importers),
                            num_cpus=IMPORTER_CPUS,
                            fn_constructor_kwargs={"url": url, "token": token, "project": project})
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.asarray(out["error"]) == ""
            report.predicted += int(ok.sum())
            report.failed += [(int(i), str(e)) for i, e in zip(out["id"], out["error"]) if e]
            has = np.asarray(out["has_sample"], dtype=bool)
            if has.any():  # as Recorder.add: every decoded image, probabilities NaN where none
                recorder.state.update(np.asarray(out["id"])[has], np.asarray(out["proba"])[has],
                                      np.asarray(out["features"])[has], version)
            bar.update(len(out["id"]))
    bar.close()
    report.failed.sort()
    return finish(studio, project, report, recorder, settings)
