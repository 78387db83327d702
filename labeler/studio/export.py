"""Exporting a project's labelled dataset.

Formats: ``imagefolder`` (one sub-folder per class, optional stratified
train/val/test split), ``csv`` and ``jsonl`` manifests, and Label Studio's
own ``JSON``, ``JSON_MIN``, ``CSV`` and ``COCO`` passed through.

Multi-label projects (``<Choices choice="multiple">``) export their label sets:
``labels`` and ``prediction`` are lists in ``jsonl`` and ``a;b`` in ``csv`` (an
annotated row with an empty ``labels`` is "none of these"). ``imagefolder`` is
refused for them: one folder per image cannot hold a set, and copies in several
class folders would lose the "none" images and double-count the rest. Everything is
written into a hidden temporary folder beside ``out`` and renamed into place
at the end: an interrupted export leaves no half dataset that looks whole,
and re-running starts clean.

The finished dataset (``finished``, ``labeler export --finished``): every task, each with its
provenance in a ``source`` column: ``person`` (the winning annotation), ``model`` (accepted by the
project's certificate: the model's frozen label, score and version) or ``needs_person`` (no label;
listed so nothing is silently left out). ``imagefolder`` keeps needs-a-person images out of the class
folders (a loader would take such a folder for a class) and lists them in ``needs_person.csv``;
``labels.csv`` beside the folders gives every image's provenance. The certificate and its
datasheet are copied in.
"""

from __future__ import annotations

import csv
import json
import mimetypes
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from labeler.errors import LabelConfigError
from labeler.fsutil import disk_full_says, fsync_dir
from labeler.labelconfig import LabelConfig
from labeler.media.fetching import Fetcher, FetchPolicy
from labeler.media.images import ImageError, open_checked
from labeler.studio.client import Studio
from labeler.studio.tasks import (
    StudioError,
    annotation_label,
    annotation_labels,
    iter_tasks,
    join_labels,
    project_config,
    winning_annotation,
)
from labeler.studio.team import annotator_name, consensus_of, team_of

STUDIO_FORMATS = {"JSON", "JSON_MIN", "CSV", "COCO"}
FORMATS = ("imagefolder", "csv", "jsonl", *sorted(STUDIO_FORMATS))


@dataclass
class ExportSummary:
    out: Path
    counts: Counter = field(default_factory=Counter)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    splits: dict[str, Counter] = field(default_factory=dict)
    sources: Counter = field(default_factory=Counter)  # finished exports: rows per provenance
    # finished exports: accepted tasks people labelled after the certificate, and how many of those disagreed
    since_certificate: Counter = field(default_factory=Counter)
    bound_now: float | None = None  # the certified bound over the model's labels that are left
    certificate_holds: bool = True  # False: people found more errors among the accepted than it allows

    def text(self) -> str:
        if not self.counts and not self.splits:
            lines = [f"exported an EMPTY dataset to {self.out}: the project has no usable labels"]
        else:
            lines = [f"exported {sum(self.counts.values())} items to {self.out}"]
            lines += [f"  {c}: {n}" for c, n in sorted(self.counts.items())]
            for split, counts in self.splits.items():
                lines.append(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
        if self.sources:
            lines.append("provenance: " + ", ".join(f"{s} {n}" for s, n in sorted(self.sources.items())))
        since = self.since_certificate
        if since["labelled"] or since["deleted"]:
            lines.append(f"since the certificate, {since['labelled']} accepted task(s) were labelled by people "
                         f"({since['disagreed']} against the model) and {since['deleted']} deleted")
            if not self.certificate_holds:
                lines.append("the certificate no longer holds: people found more model errors among its accepted "
                             "tasks than it allows; run labeler certify, or labeler audit --new-round")
            else:
                now = "no model label is left" if self.bound_now is None else f"{self.bound_now:.2%}"
                lines.append(f"the bound over the model's labels left is now {now}; labeler certify refreshes it")
        if self.skipped:
            reasons = Counter(why.split(":")[0] for _, why in self.skipped)
            lines.append(f"skipped {len(self.skipped)} tasks: " + "; ".join(f"{r} ({n})" for r, n in reasons.items()))
            lines += [f"  task {t}: {why}" for t, why in self.skipped[:20]]
        return "\n".join(lines)


@dataclass
class Row:
    task_id: int
    image: str | None  # the task's image reference (None when its data has none)
    label: str | None
    annotator: str | None
    annotated_at: str | None
    prediction: str | None
    score: float | None
    labels: tuple[str, ...] | None = None     # multi-label: the annotated classes (None: no usable annotation)
    predicted: tuple[str, ...] | None = None  # multi-label: the predicted classes (None: no prediction)
    source: str | None = None                 # finished exports: person, model or needs_person
    model_version: str | None = None          # finished exports: the version of prediction and score
    consensus_confidence: float | None = None  # the consensus's (labeler.studio.team); None: not estimable
    annotators: tuple[str, ...] = ()          # everyone who labelled the task (ground truth not counted)
    annotations: list[dict] | None = None     # jsonl: every annotation (annotator, label, ground truth, lead time)

    def record(self, multilabel: bool = False) -> dict:
        """The manifest record; multi-label rows carry ``labels`` and ``prediction`` as lists."""
        if multilabel:
            agree = None if self.labels is None or self.predicted is None else set(self.labels) == set(self.predicted)
            rec = {"task_id": self.task_id, "image": self.image,
                   "labels": None if self.labels is None else list(self.labels), "annotator": self.annotator,
                   "annotated_at": self.annotated_at,
                   "prediction": None if self.predicted is None else list(self.predicted),
                   "score": self.score, "agree": agree}
        else:
            agree = None if self.label is None or self.prediction is None else self.label == self.prediction
            rec = {"task_id": self.task_id, "image": self.image, "label": self.label, "annotator": self.annotator,
                   "annotated_at": self.annotated_at, "prediction": self.prediction, "score": self.score,
                   "agree": agree}
        extra: dict = {"consensus_confidence": self.consensus_confidence, "annotators": list(self.annotators),
                       "annotations": self.annotations or []}
        rec.update(extra)
        if self.source is not None:
            rec.update(source=self.source, model_version=self.model_version)
            if self.source == "model":
                rec["agree"] = None  # the label is the prediction: nobody compared them
        return rec

    def count_as(self) -> list[str]:
        """What the export summary counts this row as: its classes, else its predicted ones."""
        if self.source == "needs_person":
            return ["(needs a person)"]
        if self.labels is not None:  # multi-label, annotated
            return list(self.labels) or ["(none of these)"]
        if self.predicted is not None:  # multi-label, predicted only
            return [f"(predicted) {c}" for c in self.predicted] or ["(predicted) none"]
        return [self.label or f"(predicted) {self.prediction}"]


def _predicted(pred: dict | None, config: LabelConfig) -> tuple[str | None, tuple[str, ...] | None]:
    """(single choice: the predicted class, multi-label: the predicted classes) of a stored prediction."""
    if not pred:
        return None, None
    choices = list((pred["result"][0].get("value") or {}).get("choices") or [])
    if config.multiple:
        return join_labels(choices), tuple(choices)
    return (choices[0] if choices else None), None


class Accepted(NamedTuple):
    """A task the certificate lets the model label: its frozen label (multi-label: joined), set and score."""

    label: str
    labels: tuple[str, ...]
    score: float


@dataclass
class Finished:
    """What a finished export adds (:func:`labeler.learning.audit.finished`): the certificate's accepted
    tasks, the certified model version, and the files copied beside the dataset."""

    accepted: dict[int, Accepted]
    version: str
    files: list[Path]
    certificate: dict  # what export.json records of it

    def errors_allowed(self) -> int | None:
        """``B = bound * m``: the most errors the certificate allows among its ``m`` accepted tasks (an
        integer count: each stratum's bound is its certified error count over its accepted tasks)."""
        m, bound = self.certificate.get("accepted") or 0, self.certificate.get("bound")
        return None if bound is None else int(round(bound * m))

    def bound_after(self, left: int, disagreed: int) -> float | None:
        """The certified bound over the ``left`` accepted tasks that still carry the model's label, once
        people labelled others and ``disagreed`` of those against the model: with probability
        ``1 - delta`` the accepted tasks held at most ``B`` errors, ``disagreed`` are corrected, so at most
        ``B - disagreed`` remain among ``left``. None: no model label is left, or ``disagreed > B`` (the
        certificate is disproved: see :meth:`holds`)."""
        allowed = self.errors_allowed()
        if allowed is None or left <= 0 or disagreed > allowed:
            return None
        return (allowed - disagreed) / left

    def holds(self, disagreed: int) -> bool:
        """False once people have found more errors among the accepted tasks than the certificate allows."""
        allowed = self.errors_allowed()
        return allowed is None or disagreed <= allowed


def _rows(studio: Studio, project: int, config: LabelConfig, only_annotated: bool,
          summary: ExportSummary, finished: Finished | None = None,
          votes: Mapping[int, np.ndarray] | None = None) -> list[Row]:
    version = studio.projects.get(id=project).model_version
    rows = []
    tasks = list(iter_tasks(studio, project))
    # the label of every task: the consensus, with the classifier's votes where training kept them
    consensus = {} if config.multiple else consensus_of(team_of(tasks, config), votes)[0]
    for t in tasks:
        anns = t.get("annotations") or []
        winner = winning_annotation(anns, config)
        agreed = consensus.get(int(t["id"]))
        if agreed is not None and agreed.label is not None:  # a winner that gave the consensus label
            winner = max((a for a in anns if annotation_label(a, config) == agreed.label), default=winner,
                         key=lambda a: (bool(a.get("ground_truth")), a.get("updated_at") or "", a.get("id") or 0))
        label = annotation_label(winner, config) if winner is not None else None
        labels = annotation_labels(winner, config) if winner is not None and config.multiple else None
        preds = [p for p in t.get("predictions") or [] if p.get("result")]
        pred = next((p for p in preds if p.get("model_version") == version), preds[-1] if preds else None)
        pred_label, predicted = _predicted(pred, config)
        score, pred_version = (pred.get("score"), pred.get("model_version")) if pred else (None, None)
        source = None
        if finished is not None:  # every task, with its provenance; a person's label wins over the model's
            frozen = finished.accepted.get(t["id"])
            source = "person" if label is not None else "model" if frozen is not None else "needs_person"
            if source == "model" and frozen is not None:
                label = pred_label = frozen.label
                labels = predicted = frozen.labels if config.multiple else None
                score, pred_version = frozen.score, finished.version
        elif label is None and (only_annotated or pred_label is None):
            why = "cancelled or empty annotations" if anns else "no annotation"
            summary.skipped.append((t["id"], why if only_annotated else why + " and no prediction"))
            continue
        annotator = None
        if winner is not None:
            who = winner.get("completed_by")
            annotator = who.get("email") if isinstance(who, dict) else (str(who) if who is not None else None)
        ref = config.image_ref(t)
        rows.append(Row(t["id"], ref if isinstance(ref, str) else None, label, annotator,
                        (winner or {}).get("updated_at"), pred_label, score, labels, predicted, source,
                        pred_version if source is not None else None,
                        agreed.confidence if agreed is not None else None,
                        agreed.annotators if agreed is not None else (), _annotations(anns, config)))
        if source is not None:
            summary.sources[source] += 1
    if finished is not None:
        _since_certificate(rows, finished, summary)
    return rows


def _since_certificate(rows: list[Row], finished: Finished, summary: ExportSummary) -> None:
    """Accepted tasks people labelled after the certificate: how many, how many against the model, and
    the bound over the model's labels left."""
    since = summary.since_certificate
    for r in rows:
        frozen = finished.accepted.get(r.task_id)
        if frozen is not None and r.source == "person":
            since["labelled"] += 1
            since["disagreed"] += r.label != frozen.label
    since["deleted"] = len(finished.accepted) - since["labelled"] - summary.sources["model"]
    summary.bound_now = finished.bound_after(summary.sources["model"], since["disagreed"])
    summary.certificate_holds = finished.holds(since["disagreed"])


def _annotations(anns: list[dict], config: LabelConfig) -> list[dict]:
    """Every annotation of a task, as the jsonl keeps it (cancelled ones too, with label None)."""
    return [{"annotator": annotator_name(a), "label": annotation_label(a, config), "ground_truth": bool(a.get("ground_truth")),
             "lead_time": a.get("lead_time"), "updated_at": a.get("updated_at"), "cancelled": bool(a.get("was_cancelled"))}
            for a in anns]


def _split(labels: list[str], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Stratified split: within each class, shuffled, cut by ``fractions`` (train, val, test)."""
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for c in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == c]
        rng.shuffle(idx)
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        for k, i in enumerate(idx):
            out[i] = "val" if k < n_val else "test" if k < n_val + n_test else "train"
    return out


def _extension(fmt: str | None) -> str:
    return mimetypes.guess_extension(Image.MIME.get(fmt or "PNG", "image/png")) or ".png"


def _component(text: str, fallback: str) -> str:
    """``text`` as one safe file-name component (no separators, no leading dots, bounded length)."""
    safe = re.sub(r"[^\w.\- ]", "_", text).strip().lstrip(".")[:100]
    return safe or fallback


def _safe_name(task_id: int, ref: str, fmt: str | None) -> str:
    base = "" if ref.startswith("data:") else os.path.basename(ref.split("?")[0].split("d=")[-1])
    return f"{task_id}_{_component(Path(base).stem[:80], 'image')}{_extension(fmt)}"


def class_folders(classes: list[str]) -> dict[str, str]:
    """A distinct, safe folder name per class (class names come from an untrusted label config)."""
    out: dict[str, str] = {}
    for c in sorted(set(classes)):
        name = _component(c, "class")
        while name in out.values():
            name += "_"
        out[c] = name
    return out


def _recover(out: Path) -> None:
    """Finish or undo an overwrite that a crash interrupted: the old dataset is never lost."""
    olds = sorted(out.parent.glob(f".{out.name}.old-*"))
    if olds and not out.exists():
        os.rename(olds.pop(), out)  # killed between the two renames: put the old dataset back
    for p in [*olds, *out.parent.glob(f".{out.name}.partial-*")]:
        shutil.rmtree(p, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is renamed aside first and deleted only after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old)


def export(studio: Studio, project: int, fmt: str, out: Path,
           only_annotated: bool = True, split: tuple[float, float, float] | None = None,
           seed: int = 0, workers: int = 8, progress: bool = True, overwrite: bool = False,
           policy: FetchPolicy | None = None, finished: Finished | None = None,
           votes: Mapping[int, np.ndarray] | None = None) -> ExportSummary:
    """Export ``project`` to ``out`` in ``fmt``; returns counts and what was skipped.

    Images are fetched under ``policy`` (default: Label Studio's files and
    ``data:`` URLs only) and decoded; what is not an image is skipped.
    ``finished``: the finished dataset, every task with its provenance (see the module docstring).
    ``votes``: the classifier's votes training kept (:func:`labeler.studio.team.load_votes`).
    """
    _check_format(fmt, finished)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    summary = ExportSummary(out)
    try:
        if fmt in STUDIO_FORMATS:
            _studio_export(studio, project, fmt, tmp, only_annotated)
            summary.counts["tasks"] = _count_exported(tmp, fmt)
        else:
            config = project_config(studio, project)
            if fmt == "imagefolder" and config.multiple:
                raise LabelConfigError(
                    f"project {project} is multi-label (<Choices choice=\"multiple\">): an image folder per class "
                    "cannot hold a label set; export --format csv or jsonl (labels a;b or lists) instead")
            rows = _rows(studio, project, config, only_annotated and finished is None, summary, finished, votes)
            for r in rows:
                summary.counts.update(r.count_as())
            if fmt == "imagefolder":
                fetcher = Fetcher(policy or FetchPolicy(), studio.conn)
                _imagefolder([r for r in rows if r.source != "needs_person"], tmp, fetcher, split, seed, workers,
                             progress, summary)
                if finished is not None:  # the provenance of every image, and what is left out
                    _manifest(rows, tmp, "csv", provenance=True)
                    _manifest([r for r in rows if r.source == "needs_person"], tmp, "csv", name="needs_person",
                              provenance=True)
            else:
                _manifest(rows, tmp, fmt, config.multiple, provenance=finished is not None)
        _describe(tmp, project, fmt, only_annotated and finished is None, split, summary, finished)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk, a failed download: nothing half-written stays
        with disk_full_says(f"the export of project {project} (the partial files are removed)", out.parent):
            raise
    return summary


def _check_format(fmt: str, finished: Finished | None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if finished is not None and fmt in STUDIO_FORMATS:
        raise ValueError(f"a finished export is csv, jsonl or imagefolder, not Label Studio's {fmt}")


def _describe(tmp: Path, project: int, fmt: str, only_annotated: bool, split: tuple[float, float, float] | None,
              summary: ExportSummary, finished: Finished | None) -> None:
    """``export.json`` (what was exported, counts, skipped tasks); a finished export's certificate beside it."""
    for f in finished.files if finished is not None else []:
        shutil.copy2(f, tmp / f.name)
    (tmp / "export.json").write_text(json.dumps(
        {"project": project, "format": fmt, "only_annotated": only_annotated, "split": split,
         "counts": dict(summary.counts), "skipped": summary.skipped,
         **({"finished": {**finished.certificate, "sources": dict(summary.sources),
                          "labelled_since": summary.since_certificate["labelled"],
                          "disagreed_since": summary.since_certificate["disagreed"],
                          "deleted_since": summary.since_certificate["deleted"],
                          "bound_now": summary.bound_now, "holds": summary.certificate_holds}} if finished else {})},
        indent=2))


def _imagefolder(rows: list[Row], tmp: Path, fetcher: Fetcher, split, seed, workers, progress,
                 summary: ExportSummary) -> None:
    names, labelled = [], []
    for r in rows:
        name = r.label or r.prediction
        if name:
            names.append(name)
            labelled.append(r)
    folders = class_folders(names)
    splits = _split(names, split, seed) if split else [""] * len(labelled)
    bar = tqdm(total=len(labelled), desc="downloading images", unit="img", disable=not progress)
    summary.counts.clear()
    for start in range(0, len(labelled), 256):
        chunk = labelled[start:start + 256]
        datas = fetcher.get_many([r.image for r in chunk], workers=workers)
        for r, name, sp, data in zip(chunk, names[start:], splits[start:], datas):
            if isinstance(data, ImageError):
                summary.skipped.append((r.task_id, f"image not downloaded: {data}"))
                continue
            try:
                fmt = open_checked(data).format
            except ImageError as exc:
                summary.skipped.append((r.task_id, f"not an image: {exc}"))
                continue
            folder = tmp / sp / folders[name] if sp else tmp / folders[name]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / _safe_name(r.task_id, r.image or "", fmt)).write_bytes(data)
            summary.counts[name] += 1
            if sp:
                summary.splits.setdefault(sp, Counter())[name] += 1
        bar.update(len(chunk))
    bar.close()


SINGLE_COLUMNS = ["task_id", "image", "label", "annotator", "annotated_at", "prediction", "score", "agree",
                  "consensus_confidence", "annotators"]
MULTI_COLUMNS = ["task_id", "image", "labels", "annotator", "annotated_at", "prediction", "score", "agree",
                 "consensus_confidence", "annotators"]
FINISHED_COLUMNS = ["source", "model_version"]


def _manifest(rows: list[Row], tmp: Path, fmt: str, multilabel: bool = False, name: str = "labels",
              provenance: bool = False) -> None:
    records = [r.record(multilabel) for r in rows]
    if fmt == "jsonl":
        with (tmp / f"{name}.jsonl").open("w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        return
    columns = MULTI_COLUMNS if multilabel else SINGLE_COLUMNS
    with (tmp / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + FINISHED_COLUMNS if provenance else columns)
        writer.writeheader()
        writer.writerows({k: join_labels(v) if isinstance(v, list) else v for k, v in rec.items() if k != "annotations"}
                         for rec in records)  # every annotation is the jsonl's


def _studio_export(studio: Studio, project: int, fmt: str, tmp: Path, only_annotated: bool) -> None:
    params = {"exportType": fmt, "download_all_tasks": "false" if only_annotated else "true"}
    resp = studio.request("GET", f"api/projects/{project}/export", params=params, stream=True, timeout=3600)
    if resp.status_code >= 400:
        raise StudioError(f"Label Studio refused the {fmt} export: HTTP {resp.status_code} {resp.text[:300]}")
    disposition = resp.headers.get("content-disposition", "")
    name = disposition.split("filename=")[-1].strip('"; ') if "filename=" in disposition else ""
    name = Path(name).name or f"export.{fmt.lower()}"  # a name from the server, never a path
    with open(tmp / name, "wb") as f:  # streamed: a large export never sits in memory whole
        for chunk in resp.iter_content(1 << 20):
            f.write(chunk)


def _count_exported(tmp: Path, fmt: str) -> int:
    files = [p for p in tmp.iterdir() if p.name != "export.json"]
    if fmt in {"JSON", "JSON_MIN"} and files:
        return len(json.loads(files[0].read_text()))
    if fmt == "CSV" and files:
        return max(0, len(files[0].read_text().splitlines()) - 1)
    return len(files)
