"""The ``labeler`` command."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from labeler import __version__
from labeler.config import Settings  # light: the standard library only

# torch, transformers and the Label Studio SDK are imported inside the commands that use
# them, so --help, --version and argument errors answer at once.


def _settings(**overrides) -> Settings:
    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


def _num(v) -> str:
    """A metric for humans: 4 decimals, or "n/a" where it is undefined (None)."""
    return "n/a" if v is None else f"{v:.4f}"


def _fractions(split: str) -> tuple[float, float, float]:
    """``--split`` as three fractions that sum to 1 (train, validation, test)."""
    try:
        a, b, c = (float(x) for x in split.split(","))
    except ValueError:
        _fail(f"--split must be three comma-separated fractions, got {split!r}")
    if abs(a + b + c - 1) > 1e-6 or min(a, b, c) < 0:
        _fail(f"--split fractions must be non-negative and sum to 1, got {split!r}")
    return a, b, c


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Any :class:`~labeler.errors.LabelerError` ends the command with one line and its exit code."""

    def invoke(self, ctx: click.Context):
        from labeler.errors import LabelerError

        try:
            return super().invoke(ctx)
        except LabelerError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, "--version", prog_name="labeler")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """labeler: BLIP-2 pre-annotation, uncertainty ranking and retraining for Label Studio.

    After `labeler demo`, commands run from the same folder use the demo's Label Studio,
    project and models (labeler-demo/labeler.env; variables already set win).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if ctx.invoked_subcommand != "demo":
        from labeler.envfile import load_env_file

        used = load_env_file()
        if used:
            logging.getLogger(__name__).info("environment from %s", used)


@main.command()
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images (default: a small generated set).")
@click.option("--zeroshot-model", help="Hub id or local folder of a BLIP-2 ITM checkpoint "
                                        "[default: Salesforce/blip2-itm-vit-g].")
@click.option("--data-dir", default="labeler-demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--port", type=int, help="Label Studio port (default: a free one).")
@click.option("--template", default="binary", show_default=True, help="templates/<name>.xml or a path.")
@click.option("--no-wait", is_flag=True, help="Set up, print, stop the servers and exit (smoke test).")
def demo(images, zeroshot_model, data_dir, port, template, no_wait) -> None:
    """Start Label Studio + the backend and pre-annotate a project of images."""
    from labeler.dev.demo import run_demo
    from labeler.models.zeroshot import DEFAULT_MODEL

    info = run_demo(images, zeroshot_model or DEFAULT_MODEL, data_dir, port, template, wait=not no_wait)
    for server in info.pop("servers", []):
        server.stop()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9090, show_default=True)
def serve(host: str, port: int) -> None:
    """Run the ML backend with Flask's server (use gunicorn in production)."""
    from ml_backend import create_app

    create_app().run(host=host, port=port, threaded=True)


def _predictor(settings: Settings):
    from labeler.models.predictor import Predictor

    predictor = Predictor(settings)
    predictor.load_scorer()
    if predictor.scorer_error:
        click.echo(f"warning: {predictor.scorer_error}", err=True)
    return predictor


def _studio(settings: Settings):
    """The Label Studio of the settings, checked once (an unreachable one ends the command)."""
    from labeler.studio.client import Studio

    return Studio.connect(settings.label_studio_url, settings.label_studio_api_key)


studio_options = [
    click.option("--url", envvar="LABEL_STUDIO_URL", help="Label Studio URL [env LABEL_STUDIO_URL]"),
    click.option("--api-key", envvar="LABEL_STUDIO_API_KEY", help="[env LABEL_STUDIO_API_KEY]"),
    click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path), help="[env MODEL_DIR]"),
]


def with_studio(f):
    for opt in reversed(studio_options):
        f = opt(f)
    return f


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--classifier", type=click.Choice(["auto", "head", "cnn"]))
@with_studio
def train(project, classifier, url, api_key, model_dir) -> None:
    """Train a new version from the project's annotations (and promote it if not worse)."""
    from labeler.learning.training import TrainingError, train_project

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir, classifier=classifier)
    studio = _studio(s)
    predictor = _predictor(s)
    from labeler.studio.tasks import report_to_model_card

    try:
        out = train_project(predictor, str(project), studio, trigger="labeler train",
                            report=lambda step: click.echo(f"... {step}", err=True))
    except TrainingError as exc:
        report_to_model_card(studio, str(project), {"status": "failed", "error": str(exc), "finished": time.time()},
                             predictor)
        _fail(f"training failed, the serving model is unchanged: {exc}")
    m = out.meta.get("metrics") or {}
    click.echo(f"{out.version}: held-out accuracy {m.get('accuracy')}, EER {m.get('eer')}; "
               f"{'promoted' if out.promoted else 'NOT promoted'} ({out.meta['promotion_reason']})")
    if out.promoted:
        click.echo(_preannotate(studio, project, s, predictor=predictor).summary())
    report_to_model_card(studio, str(project), {"status": "done", "version": out.version, "promoted": out.promoted,
                                              "reason": out.meta.get("promotion_reason"), "finished": time.time()},
                         predictor)


def _preannotate(studio, project: int, s: Settings, engine: str = "auto", predictor=None, **kwargs):
    """Pre-annotate on the Ray cluster (``--engine ray``, or ``auto`` with Ray installed and ``RAY_ADDRESS``
    naming a cluster, as inside a Ray job) or in this process; returns the report."""
    from labeler.distributed import ray_installed, require_ray

    if engine == "ray" or (engine == "auto" and s.ray_driver_address and ray_installed()):
        require_ray()
        from labeler.distributed.bulk import preannotate_ray

        return preannotate_ray(studio, project, s, **kwargs)
    from labeler.studio.preannotate import preannotate as run

    return run(studio, project, predictor or _predictor(s), **kwargs)


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--all", "redo", is_flag=True, help="Re-predict tasks that already have a current prediction.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--engine", type=click.Choice(["auto", "local", "ray"]), default="auto", show_default=True,
              help="ray: on the Ray cluster at RAY_ADDRESS (pip install 'labeler[ray]'); "
                   "auto: ray when RAY_ADDRESS is set, else in this process.")
@with_studio
def preannotate(project, redo, batch_size, engine, url, api_key, model_dir) -> None:
    """Score every task (resumable) and write predictions in bulk."""
    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    rep = _preannotate(_studio(s), project, s, engine, only_missing=not redo, batch_size=batch_size)
    click.echo(rep.summary())


@main.command("export")
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--format", "fmt", required=True,
              type=click.Choice(["imagefolder", "csv", "jsonl", "JSON", "JSON_MIN", "CSV", "COCO"]))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--all-tasks", is_flag=True, help="Also tasks with only a prediction (labelled by the model).")
@click.option("--split", help="imagefolder: train/val/test fractions, e.g. 0.8,0.1,0.1 (stratified by class).")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--finished", is_flag=True,
              help="Every task with its provenance (person, model accepted by the certificate, needs_person), "
                   "the certificate and its datasheet beside it (after labeler certify).")
@with_studio
def export_cmd(project, fmt, out, all_tasks, split, seed, overwrite, finished, url, api_key, model_dir) -> None:
    """Export the labelled dataset (written to a temp folder, renamed into place when complete)."""
    from labeler.media.fetching import fetch_policy
    from labeler.studio.export import export
    from labeler.studio.team import load_votes

    fractions = _fractions(split) if split else None
    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    if finished:
        from labeler.learning.audit import finished as certified

        finished = certified(s.model_dir, project)  # no certificate: a CertificateError, before any download
    studio = _studio(s)
    try:
        summary = export(studio, project, fmt, out,
                         only_annotated=not all_tasks, split=fractions, seed=seed, overwrite=overwrite,
                         policy=fetch_policy(s), finished=finished or None, votes=load_votes(s.model_dir, project))
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    click.echo(summary.text())


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--eps", type=float, help="Target: at most EPS wrong among the tasks the model labels [default: the "
              "latest round's, else 0.02].")
@click.option("--delta", type=float, help="The guarantee holds with probability 1 - DELTA [default: round 1's, "
              "else 0.05].")
@click.option("--per-class/--overall", default=None, help="Bound every predicted class's error, or only the overall "
              "one [default: the latest round's, else overall].")
@click.option("--seed", type=click.IntRange(min=0), help="Seeds the draw (with the round number) [default: from the OS, "
                                                         "recorded in the round file].")
@click.option("--new-round", is_flag=True, help="Draw a new audit round from the tasks unlabelled now.")
@with_studio
def audit(project, eps, delta, per_class, seed, new_round, url, api_key, model_dir) -> None:
    """Draw the audit that certifies the model's labels: people label the tab "Audit", then labeler certify."""
    from labeler.learning.audit import AUDIT_VIEW, draw_round, load_round

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    studio = _studio(s)
    before = load_round(s.model_dir, project)
    rnd = draw_round(studio, project, _predictor(s), eps, delta, per_class, seed, new_round)
    plan = rnd["plan"]
    if before is not None and before["round"] == rnd["round"]:
        click.echo(f"audit round {rnd['round']} was drawn on {rnd['created']} and stays as drawn "
                   "(--new-round draws another); its tasks are marked again")
    click.echo(f"round {rnd['round']}: model {rnd['version']}, at most {rnd['eps']:.2%} wrong with "
               f"{1 - rnd['delta']:.0%} confidence ({'per class' if rnd['per_class'] else 'overall'})")
    click.echo(f"audit about {plan['expected_audit']} of the {plan['pool']} unlabelled tasks; then about "
               f"{plan['expected_accepted'] / max(plan['pool'], 1):.0%} can be accepted")
    if plan.get("unaudited"):
        click.echo(f"not audited, as no audit of them is expected to let the model label any at this target "
                   f"(they need a person): class(es) {', '.join(plan['unaudited'])}")
    if rnd["order"]:
        click.echo(f"drawn: {len(rnd['order'])} tasks, in the Label Studio tab \"{AUDIT_VIEW}\"; label every one "
                   f"of them, then run labeler certify --project {project}")
    else:
        click.echo("drawn: no task, so nothing can be certified: every unlabelled task needs a person (a better "
                   "model, a larger pool or a looser target changes that; then labeler audit --new-round)")
    if rnd["unscored"]:
        click.echo(f"{len(rnd['unscored'])} tasks the model could not score are left to a person")


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@with_studio
def certify(project, url, api_key, model_dir) -> None:
    """Certify the latest audit round with the labels given so far; tabs mark what needs a person."""
    from labeler.learning.audit import NEEDS_VIEW, certify_project
    from labeler.studio.team import read_known

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    cert = certify_project(_studio(s), project, s.model_dir, s.consensus_min_confidence, s.control_rate,
                           read_known(Path(s.honeypots)) if s.honeypots else None)
    click.echo(cert.summary())
    left = cert.audited - cert.audit_labelled
    click.echo(f"{left} audit task(s) still unlabelled (counted as errors until labelled)" if left
               else "every audit task is labelled")
    click.echo(f'tasks without a label that the model may not give: Label Studio tab "{NEEDS_VIEW}"; '
               f"then labeler export --project {project} --finished")


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--annotations", default=3, show_default=True, help="People per overlapping task.")
@click.option("--share", default=0.1, show_default=True, help="Share of the tasks that overlap (0.1: 10 %).")
@with_studio
def overlap(project, annotations, share, url, api_key, model_dir) -> None:
    """Let SHARE of the tasks be labelled by ANNOTATIONS people (Label Studio's own overlap setting)."""
    from labeler.studio.team import set_overlap

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    try:
        set_overlap(_studio(s), project, annotations, share)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"project {project}: {share:.0%} of the tasks go to {annotations} people in Label Studio's "
               "\"Label All Tasks\" stream, those first")


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--honeypots", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of task_id,label known labels (besides Label Studio's ground-truth annotations).")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (the admin page's data).")
@with_studio
def annotators(project, honeypots, as_json, url, api_key, model_dir) -> None:
    """Annotator quality: accuracy with its interval, confusion, kappa, speed, automation bias."""
    import json

    from labeler.learning.team_report import project_report, report_text
    from labeler.studio.team import load_votes, read_known

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    known = read_known(honeypots or (Path(s.honeypots) if s.honeypots else None))
    report = project_report(_studio(s), project, s.control_rate, known, load_votes(s.model_dir, project))
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(report_text(report)))


@main.command()
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--no-publish", is_flag=True, help="Only print; do not create the Label Studio tab.")
@with_studio
def review(project, no_publish, url, api_key, model_dir) -> None:
    """Flag annotations the model contradicts with confidence; tab "Suspected label errors"."""
    from labeler.learning.review import review as run

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    suspects = run(_studio(s), project, _predictor(s), publish=not no_publish)
    click.echo(f"{len(suspects)} suspected label errors" + ("" if no_publish else
               ' (Label Studio tab "Suspected label errors")'))
    for sp in suspects[:50]:
        click.echo(f"  task {sp.task_id}: labelled {sp.given}, model says {sp.suggested} "
                   f"(suspicion {sp.suspicion:.3f})")


@main.command()
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the CSV's image paths are relative to (default: the CSV's folder).")
@click.option("--labels", "labels_csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strategy", "strategies", multiple=True, default=["margin_diverse"], show_default=True,
              help="Repeatable; 'all' for every strategy.")
@click.option("--budget", default=400, show_default=True, help="Human labels.")
@click.option("--batch", default=25, show_default=True, help="Labels per round (smaller batches let the ranking adapt sooner).")
@click.option("--start", type=int, help="Size of the first (cold-start) batch [default: --batch].")
@click.option("--start-per-class", type=int, default=0,
              help="Learning curves only: the first labels are this many random images of each class (the few-label "
                   "protocol, e.g. 1: one label per class), instead of the strategy's first batch.")
@click.option("--holdout", default=600, show_default=True, help="Held-out images, never queried.")
@click.option("--seeds", default=1, show_default=True, help="Repeat with seeds 0..N-1.")
@click.option("--classifier", default="cnn", type=click.Choice(["cnn", "head"]), show_default=True)
@click.option("--zeroshot-model", help="BLIP-2 ITM model for cold-start scores and head features (optional).")
@click.option("--cnn-steps", type=int, help="Cap on CNN optimiser steps per round (for quick runs).")
@click.option("--self-train", type=float, default=lambda: _settings().self_train, show_default="0.9",
              help="Also train on pool images predicted with at least this confidence, as the backend's "
                   "retraining does (LABELER_SELF_TRAIN); 0 turns it off.")
@click.option("--metric", type=click.Choice(["auto", "eer", "accuracy", "macro_f1"]), default="auto",
              show_default=True, help="What the table and plot track; auto: EER for two classes, macro-F1 for more.")
@click.option("--targets", help="Targets for the table [default: EER 0.05,0.04,0.03; accuracy or macro-F1 "
                                "0.8,0.9,0.95].")
@click.option("--out", default="simulation", show_default=True, type=click.Path(path_type=Path))
@click.option("--save-model", type=click.Path(path_type=Path), help="Keep the final model of the first run here.")
@click.option("--certify", "eps", type=float,
              help="Finish the dataset instead: after the queue's --budget labels, an audit and a certificate that "
                   "at most EPS of the labels the model gives unaided are wrong (e.g. 0.02).")
@click.option("--delta", type=float, default=0.05, show_default=True,
              help="With --certify: the certificate holds with probability 1 - DELTA.")
@click.option("--per-class", is_flag=True, help="With --certify: bound every predicted class's error, not only the overall.")
@click.option("--accepted-out", type=click.Path(dir_okay=False, path_type=Path),
              help="With --certify: write image,label for every image the model labelled (first strategy, seed 0; "
                   "other runs get .seedN/.STRATEGY suffixes).")
@click.option("--redraws", default=0, show_default=True,
              help="With --certify: also re-draw the audit this many times per run and count violated claims.")
@click.option("--annotators", help="A team of simulated annotators of these accuracies (e.g. 0.97,0.9,0.7): consensus "
              "against majority vote and the best annotator, and relabel-or-new against new tasks only at --budget "
              "clicks (--start first, --batch per round, --holdout held out); frozen ImageNet features + logistic regression.")
@click.option("--per-task", default=2, show_default=True, help="With --annotators: labels per task in the consensus comparison.")
@click.option("--levers", help="Compare issue 23's levers instead of --strategy, each on and off in the same run: "
                               "comma-separated from pretrain (self-supervised encoder), typiclust (cold start), "
                               "fixmatch (consistency training instead of self-training), ensemble (three seeds averaged).")
@click.option("--variants", "variant_names", help="With --levers: only these variants, comma-separated from random+..., "
                                                  "default, all (every lever) and all-X (every lever but X).")
@click.option("--full-data", is_flag=True, help="Also fit every model on all labels outside the hold-out, and report "
                                                 "the labels each curve needs to reach 95 % and 99 % of that.")
@click.option("--pretrain-steps", default=Settings.pretrain_steps, show_default=True,
              help="With --levers pretrain: SimCLR steps.")
@click.option("--typical-per-class", default=0, show_default=True,  # strategies.TYPICAL_PER_CLASS
              help="With --levers typiclust: typical images while there is no model, then until this many labels per class.")
def simulate(images, labels_csv, strategies, budget, batch, start, start_per_class, holdout, seeds, classifier, zeroshot_model,
             cnn_steps, self_train, metric, targets, out, save_model, eps, delta, per_class, accepted_out,
             redraws, annotators, per_task, levers, variant_names, full_data, pretrain_steps, typical_per_class) -> None:
    """Replay the annotation loop offline and write learning curves (CSV + PNG); with --certify, finish the
    dataset (queue, audit, certified auto-accept) and check the claim against the known labels; with
    --annotators, a team of simulated annotators (issue 22)."""
    from labeler.learning.datasets import read_labels
    from labeler.learning.simulate import STRATEGIES, imagenet_features, make_classifier
    from labeler.models.classifiers import Sample

    if eps is not None:
        from labeler.learning.certify import check_levels

        check_levels(eps, delta)  # a LabelerError: one line, from the group
        holdout = 0  # every image belongs to the finished dataset
    self_train, data = self_train or None, read_labels(labels_csv, images)
    classes, y = data.classes, _check_simulation(data, labels_csv, budget, holdout)
    if start_per_class and (annotators or eps is not None):
        _fail("--start-per-class is for learning curves, not with --certify or --annotators")
    if annotators:
        return _simulate_team(data, y, annotators, per_task, seeds, budget, start, batch, holdout)
    metric, goals = _simulation_metric(metric, targets, len(classes))
    strategies = list(STRATEGIES) if "all" in strategies else list(strategies)
    samples = [Sample(im) for im in data.images()]
    zeroshot = _zeroshot_evidence(samples, zeroshot_model, classes) if zeroshot_model else None
    if zeroshot is None and classifier == "head":
        _fail("--classifier head needs --zeroshot-model")
    features = imagenet_features(samples)
    cnn_options = {"max_steps": cnn_steps, "min_steps": min(cnn_steps, 150)} if cnn_steps else {}
    make = make_classifier(classifier, classes, **cnn_options)
    if eps is not None:
        if levers or full_data:
            _fail("--levers and --full-data are for learning curves, not with --certify")
        return _simulate_finish(samples, y, data, strategies, budget, batch, start, seeds, make, zeroshot, features,
                                self_train, eps, delta, per_class, accepted_out, redraws, out)
    runs = _simulation_runs(strategies, levers, variant_names, samples, make, features, out, pretrain_steps,
                            cnn_options)
    if full_data:
        goals += _full_data_goals(samples, y, classes, runs, seeds, holdout, metric)
    _simulate_curves(samples, y, classes, runs, budget, batch, start, seeds, holdout, zeroshot,
                     zeroshot_model, self_train, metric, goals, save_model, labels_csv, out, typical_per_class,
                     start_per_class)


def _simulation_runs(strategies, levers, variant_names, samples, make, features, out: Path, pretrain_steps: int,
                     cnn_options):
    """(variant, its estimator, its diversity features) per curve: the strategies as they are, or with
    ``--levers`` the variants of :func:`labeler.learning.levers.variants` (pretraining once, if asked)."""
    from labeler.errors import LabelerError
    from labeler.learning.levers import Variant, check_levers, pick_variants, simulation_encoder, variants
    from labeler.learning.simulate import make_classifier
    from labeler.models.classifiers import CNNClassifier
    from labeler.models.strategies import encoder_features

    if not levers:
        return [(Variant(s, s, frozenset()), make, features) for s in strategies]
    try:
        chosen = variants(check_levers([lev.strip() for lev in levers.split(",") if lev.strip()]))
        chosen = pick_variants(chosen, [n.strip() for n in (variant_names or "").split(",") if n.strip()])
    except LabelerError as exc:
        _fail(str(exc))
    if any(v.levers & {"pretrain", "fixmatch", "ensemble"} for v in chosen) and not isinstance(make, CNNClassifier):
        _fail("--levers pretrain, fixmatch and ensemble need --classifier cnn (the head's members would all be alike)")
    if not any("pretrain" in v.levers for v in chosen):
        return [(v, v.estimator(make), features) for v in chosen]
    encoder, info = simulation_encoder(samples, Path(out), pretrain_steps)
    click.echo(f"self-supervised encoder: {encoder} ({'reused' if info.get('reused') else 'pretrained'}, "
               f"{info['steps']} steps, {info['pretrain_seconds']} s, final loss {info['final_loss']})")
    make_enc = make_classifier("cnn", list(make.classes), encoder=str(encoder), **cnn_options)
    feats_enc = encoder_features(samples, encoder)
    return [(v, v.estimator(make_enc), feats_enc) if "pretrain" in v.levers
            else (v, v.estimator(make), features) for v in chosen]


def _full_data_goals(samples, y, classes, runs, seeds: int, holdout: int, metric: str) -> list[float]:
    """``--full-data``: the best of the runs' models on every label outside the hold-out, and the
    targets 95 % and 99 % of it (:func:`labeler.learning.simulate.share_of`)."""
    from labeler.learning.metrics import HIGHER_IS_BETTER
    from labeler.learning.simulate import full_data_reference, share_of

    t = time.perf_counter()
    estimators = list({_reference_key(make): make for _, make, _ in runs}.values())
    holdouts = [_holdout(y, holdout, s) for s in range(seeds)]
    each = full_data_reference(samples, y, classes, estimators, holdouts, metric)
    full = max(each) if HIGHER_IS_BETTER[metric] else min(each)
    goals = [round(share_of(full, share, metric), 4) for share in (0.95, 0.99)]
    click.echo(f"full data ({len(y) - len(holdouts[0])} labels, {seeds} seed(s), {time.perf_counter() - t:.0f} s): "
               f"{metric} " + ", ".join(f"{v:.4f}" for v in each) + f" for the {len(each)} model(s) of the curves; "
               f"95 % and 99 % of the best: {metric} {goals[0]} and {goals[1]}")
    return goals


def _reference_key(estimator) -> str:
    """What the full-data fit of ``estimator`` depends on: its settings, FixMatch aside (no pool there)."""
    params = {k: v for k, v in estimator.get_params(deep=True).items()
              if not k.endswith("consistency") and not hasattr(v, "get_params")}
    return f"{type(estimator).__name__}{sorted(params.items())!r}"


def _simulate_team(data, y, annotators: str, per_task: int, seeds: int, clicks: int, start: int | None, batch: int,
                   holdout: int) -> None:
    """``--annotators``: :func:`labeler.learning.simulate_team.team_study`, printed."""
    from labeler.learning.simulate_team import team_study
    from labeler.models.classifiers import Sample
    from labeler.models.strategies import imagenet_features

    try:
        acc = [float(a) for a in annotators.split(",")]
    except ValueError:
        _fail(f"--annotators {annotators!r}: accuracies separated by commas, e.g. 0.97,0.9,0.7")
    if not acc or not all(0 < a <= 1 for a in acc):
        _fail(f"--annotators {annotators!r}: each accuracy must be in (0, 1]")
    features = imagenet_features([Sample(im) for im in data.images()])
    click.echo(f"{len(y)} tasks, {len(data.classes)} classes, annotators {acc}")
    for line in team_study(features, y, len(data.classes), acc, per_task, seeds, clicks, start or batch, batch, holdout):
        click.echo(line)


def _simulate_curves(samples, y, classes, runs, budget, batch, start, seeds, holdout, zeroshot,
                     zeroshot_model, self_train, metric, goals, save_model, labels_csv, out, typical_per_class,
                     start_per_class: int = 0) -> None:
    """Learning curves: per seed and strategy (or lever variant), the held-out metric after each round."""
    from labeler.learning.simulate import run, write_outputs

    rows, saved = [], False
    t0 = time.perf_counter()
    strategies = [v.name for v, _, _ in runs]
    for seed in range(seeds):
        test = _holdout(y, holdout, seed)
        for variant, make, features in runs:
            t, strategy = time.perf_counter(), variant.name
            res, annotator = run(samples, y, classes, variant.strategy, budget, batch, test, seed, make,
                                 zeroshot=zeroshot, features=features, start=start,
                                 self_train=None if variant.consistency else self_train, name=strategy,
                                 unlabelled=variant.consistency, start_per_class=start_per_class,
                                 **variant.select_options(len(classes), typical_per_class))
            assert not annotator.queried & set(test.tolist()), "held-out images must never be queried"
            rows += res.rows
            last = res.rows[-1] if res.rows else {}
            click.echo(f"{strategy:>16} seed {seed}: {len(annotator.queried)} labels, "
                       f"{metric} {_num(last.get(metric))}, accuracy {_num(last.get('accuracy'))}, "
                       f"{time.perf_counter() - t:.0f} s")
            if save_model and not saved and res.model is not None:
                # evaluate needs the prompts the head's zero-shot evidence was scored with
                used = {"prompts": _simulation_prompts(classes), "zeroshot_model": zeroshot_model} if zeroshot is not None else {}
                saved = _save_simulated_model(res.model, Path(save_model), strategy=strategy, seed=seed,
                                              n_train=len(annotator.queried), metrics=last, **used)
    if not rows:
        _fail("no round could train (too few labels of some class)")
    title = f"{labels_csv.parent.name}: {seeds} seed(s), hold-out {holdout}"
    if self_train is not None:
        title += f", self-training at p >= {self_train}"
    csv_path, png_path = write_outputs(rows, out, title, metric)
    _print_curves(rows, strategies, goals, budget, metric, seeds)
    click.echo(f"\nwrote {csv_path} and {png_path} in {time.perf_counter() - t0:.0f} s")


def _simulate_finish(samples, y, data, strategies, budget, batch, start, seeds, make, zeroshot, features, self_train,
                     eps, delta, per_class, accepted_out, redraws, out) -> None:
    """``simulate --certify``: per strategy and seed, the finished dataset's human labels and claim."""
    import numpy as np

    from labeler.learning.simulate_finish import finish, write_accepted, write_results

    classes, rows, t0 = data.classes, [], time.perf_counter()
    for seed in range(seeds):
        for strategy in strategies:
            r = finish(samples, y, classes, strategy, budget, batch, seed, make, eps, delta, per_class,
                       features=features, zeroshot=zeroshot, self_train=self_train, start=start, redraws=redraws)
            rows.append(r.row())
            bound = "none" if r.claimed_bound is None else f"{r.claimed_bound:.4f}"
            real = "n/a" if r.realized_error is None else f"{r.realized_error:.4f}"
            click.echo(f"{strategy:>16} seed {seed}: claimed error <= {bound} (target {eps:g}, realized {real}"
                       f"{', VIOLATED' if r.violated else ''}); coverage {r.coverage:.1%} ({r.accepted} accepted); "
                       f"people {r.people} = queue {r.queue} + audit {r.audit} + left to a person {r.to_person} "
                       f"({r.people / r.images:.1%} of {r.images})"
                       + (f"; redraws: {r.redraw_violations}/{r.redraws} violated, mean coverage "
                          f"{r.redraw_coverage:.1%}" if r.redraws else ""))
            for line in r.blocked:
                click.echo(f"{'':>17} blocked: {line}")
            if accepted_out:
                suffix = "".join([f".seed{seed}" if seed else "", f".{strategy}" if strategy != strategies[0] else ""])
                path = accepted_out.with_name(accepted_out.stem + suffix + accepted_out.suffix) if suffix else accepted_out
                n = write_accepted(path, r, data.names, classes)
                click.echo(f"{'':>17} wrote {n} accepted labels to {path}")
    path = write_results(rows, out)
    click.echo(f"\nover {seeds} seed(s), target {eps:g} with confidence {1 - delta:.0%}"
               f"{' per class' if per_class else ''}:")
    for strategy in strategies:
        sel = [r for r in rows if r["strategy"] == strategy]
        viol = sum(r["violated"] for r in sel)
        people = np.array([r["people_share"] for r in sel])
        cov = np.array([r["coverage"] for r in sel])
        line = (f"{strategy:>16}: claim violated in {viol} of {len(sel)} run(s); people label "
                f"{people.mean():.1%} +- {people.std():.1%} of the images; coverage {cov.mean():.1%} +- {cov.std():.1%}")
        if redraws:
            line += (f"; audit redraws: {sum(r['redraw_violations'] for r in sel)} of "
                     f"{sum(r['redraws'] for r in sel)} violated")
        click.echo(line)
    click.echo(f"labelling everything: {len(y)} people labels. Wrote {path} in {time.perf_counter() - t0:.0f} s")


def _check_simulation(data, labels_csv: Path, budget: int, holdout: int):
    """The class indices of ``data``, or a one-line error when a simulation cannot run on it."""
    import numpy as np

    classes = data.classes
    if len(classes) < 2:
        _fail(f"{labels_csv} has one class ({classes}); a classifier needs two or more")
    y = data.targets(classes)
    holdout = max(holdout, len(classes))  # every class is held out at least once
    if holdout >= len(y) - budget:
        _fail(f"--holdout {holdout} + --budget {budget} exceed the {len(y)} images")
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:
        short = ", ".join(f"{c!r} ({n})" for c, n in zip(classes, counts) if n < 2)
        _fail(f"every class needs 2 images or more (one for the hold-out, one to learn from); {short} in {labels_csv}")
    return y


def _holdout(y, size: int, seed: int):
    """``size`` (at least one per class) indices: one image of every class, the rest stratified by
    class (each class about as often as in ``y``), so a rare class is evaluated too."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(1000 + seed)
    first = np.array([rng.choice(np.flatnonzero(y == c)) for c in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(y)), first)
    if size <= len(first):
        return np.sort(first)
    # stratify needs two of a class among the rest; a class with fewer is sampled without it
    counts = np.bincount(y[rest])
    strat = y[rest] if counts[counts > 0].min() >= 2 and size - len(first) >= (counts > 0).sum() else None
    _, more = train_test_split(rest, test_size=size - len(first), stratify=strat, random_state=1000 + seed)
    return np.sort(np.concatenate([first, more]))


def _save_simulated_model(model, folder: Path, **meta) -> bool:
    import json

    (folder / "meta.json").parent.mkdir(parents=True, exist_ok=True)
    saved = model.save(folder)
    (folder / "meta.json").write_text(json.dumps({**saved, **meta}, indent=2))
    return True


def _simulation_metric(metric: str, targets: str | None, n_classes: int) -> tuple[str, list[float]]:
    """The metric simulate tracks (EER for two classes, macro-F1 for more) and its targets."""
    from labeler.learning.metrics import default_metric

    metric = default_metric(n_classes) if metric == "auto" else metric
    if metric == "eer" and n_classes > 2:
        metric = "eer_macro"  # the mean one-vs-rest EER
    try:
        goals = [float(x) for x in (targets or ("0.05,0.04,0.03" if metric.startswith("eer")
                                                else "0.8,0.9,0.95")).split(",")]
    except ValueError:
        _fail(f"--targets must be comma-separated numbers, got {targets!r}")
    return metric, goals


def _simulation_prompts(classes: list[str]) -> dict[str, list[str]]:
    """The prompts a simulation scores: each class's default hint, as an unhinted label config gets."""
    from labeler.labelconfig import DEFAULT_TEMPLATE

    return {c: [DEFAULT_TEMPLATE.format(c)] for c in classes}


def _zeroshot_evidence(samples, zeroshot_model: str, classes: list[str]):
    """Attach BLIP-2 features and class evidence to ``samples``; returns zero-shot probabilities."""
    from labeler.models.zeroshot import ZeroShotScorer, softmax

    scorer = ZeroShotScorer.load(zeroshot_model)
    emb = scorer.embed([s.image for s in samples])
    evidence = scorer.class_scores(emb.hidden, _simulation_prompts(classes))
    for s, f, z in zip(samples, emb.pooled.float().cpu().numpy(), evidence):
        s.features, s.zeroshot = f, z
    return softmax(evidence)


def _print_curves(rows: list[dict], strategies: list[str], goals: list[float], budget: int, metric: str,
                  seeds: int) -> None:
    import numpy as np

    from labeler.learning.simulate import by_labels, labels_to_reach

    click.echo(f"\nlabels needed to reach a mean {metric} (over {seeds} seed(s)) of:")
    click.echo(f"{'strategy':>16} " + " ".join(f"{g:>8}" for g in goals))
    for strategy in strategies:
        sel = [r for r in rows if r["strategy"] == strategy]
        cells = [labels_to_reach(sel, g, metric) for g in goals]
        click.echo(f"{strategy:>16} " + " ".join(f"{(c if c is not None else '>' + str(budget)):>8}" for c in cells))
    click.echo(f"\n{metric} at each checkpoint (mean +- std):")
    for strategy in strategies:
        by_n = by_labels([r for r in rows if r["strategy"] == strategy], metric)
        click.echo(f"{strategy:>16} " + "  ".join(f"{n}:{np.mean(v):.4f}+-{np.std(v):.4f}" for n, v in by_n.items()))


@main.command("evaluate")
@click.option("--model", "model_ref", required=True, help="A registry version (e.g. v3-cnn) or a model folder.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--labels", "labels_csv", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def evaluate_cmd(model_ref, images, labels_csv, model_dir, as_json) -> None:
    """Accuracy, ROC AUC, EER and confusion matrix of a trained model on a labelled folder."""
    from labeler.errors import RegistryError
    from labeler.learning.datasets import read_labels
    from labeler.learning.metrics import evaluate
    from labeler.models.classifiers import Sample, load_classifier
    from labeler.models.openregistry import registry_for

    folder = Path(model_ref)
    if not (folder / "classifier.json").exists():
        try:
            _, folder = registry_for(_settings(model_dir=model_dir)).find(model_ref)
        except RegistryError as exc:
            _fail(f"{model_ref} is neither a model folder nor a registry version: {exc}")
    model = load_classifier(folder)
    data = read_labels(labels_csv, images)
    unknown = set(data.labels) - set(model.classes)
    if unknown:
        _fail(f"labels {sorted(unknown)} are not classes of the model {model.classes}")
    samples = [Sample(im) for im in data.images()]
    if model.needs_features:
        predictor = _predictor(_settings(model_dir=model_dir))
        if predictor.scorer is None:
            _fail("this model needs the zero-shot model's embeddings; set LABELER_ZEROSHOT_MODEL")
        emb = predictor.scorer.embed([s.image for s in samples])
        meta_file = folder / "meta.json"
        prompts = json.loads(meta_file.read_text()).get("prompts") if meta_file.exists() else None
        evidence = (predictor.scorer.class_scores(emb.hidden, prompts) if prompts
                    else [None] * len(samples))  # the head was trained with zero-shot evidence for these prompts
        for s, f, z in zip(samples, emb.pooled.float().cpu().numpy(), evidence):
            s.features, s.zeroshot = f, z
    m = evaluate(data.targets(model.classes), model.predict_proba(samples), model.classes)
    if as_json:
        click.echo(json.dumps(m, indent=2))
        return
    click.echo(f"{len(samples)} images, model {folder}")
    click.echo(f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}"
               + (f", ROC AUC {m['roc_auc']:.4f}, EER {m['eer']:.4f}" if "eer" in m else "")
               + (f", one-vs-rest mean ROC AUC {_num(m['roc_auc_macro'])}, EER {_num(m['eer_macro'])}"
                  if "eer_macro" in m else ""))
    click.echo(f"{'class':>12} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>7} {'AUC(ovr)':>8} {'EER(ovr)':>8}")
    for c, pc in m["per_class"].items():
        click.echo(f"{c:>12} {pc['precision']:9.4f} {pc['recall']:7.4f} {pc['f1']:7.4f} {pc['support']:7d} "
                   f"{_num(pc['roc_auc']):>8} {_num(pc['eer']):>8}")
    click.echo("confusion matrix (rows: true, columns: predicted) " + " ".join(model.classes))
    for c, row in zip(model.classes, m["confusion_matrix"]):
        click.echo(f"  {c:>12} " + " ".join(f"{v:>6}" for v in row))


@main.command("queue")
@click.option("--project", required=True, type=int, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--strategy", default="margin_diverse", show_default=True,
              type=click.Choice(["random", "least_confidence", "margin", "entropy", "margin_diverse"]))
@click.option("--batch", type=int, help="Labels between retrainings [default: LABELER_TRAIN_EVERY or 25].")
@with_studio
def queue_cmd(project, strategy, batch, url, api_key, model_dir) -> None:
    """Re-rank the "Next to label" tab from the last pre-annotation's scores (no re-scoring)."""
    from labeler.studio.queue import republish
    from labeler.studio.teamqueue import TeamQueue

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    rep = republish(_studio(s), project, s.model_dir, strategy, batch or s.train_every or 25, s.seed,
                    TeamQueue.from_settings(s))
    click.echo(rep.summary())


@main.command("map")
@click.option("--project", type=int, help="A Label Studio project (its serving model) ...")
@click.option("--labels", "labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="... or a labelled folder's CSV (image,label).")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_ref", help="With --labels: a registry version or model folder for predictions.")
@click.option("--max-points", default=5000, show_default=True, help="Larger sets are sampled (suspects kept).")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="map", show_default=True, type=click.Path(path_type=Path))
@with_studio
def map_cmd(project, labels_csv, images, model_ref, max_points, seed, out, url, api_key, model_dir) -> None:
    """A 2-D map (t-SNE) of the image embeddings: map.png and an interactive map.html."""
    from labeler.learning import datamap

    if (project is None) == (labels_csv is None):
        _fail("give either --project or --labels")
    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    if project is not None:
        studio = _studio(s)
        m = datamap.project_map(studio, project, _predictor(s), max_points, seed)
        # The backend serves the latest map of a project to admins from here.
        from labeler.models.registry import Registry

        html_copy = Registry(s.model_dir).project_dir(str(project), create=True) / "map.html"
        datamap.write_html(m, html_copy)
    else:
        from labeler.errors import RegistryError
        from labeler.learning.datasets import read_labels
        from labeler.models.classifiers import Sample, load_classifier
        from labeler.models.openregistry import registry_for

        data = read_labels(labels_csv, images)
        samples = [Sample(im) for im in data.images()]
        model, proba = None, None
        classes: Sequence[str] = data.classes
        if model_ref:
            folder = Path(model_ref)
            if not (folder / "classifier.json").exists():
                try:
                    _, folder = registry_for(s).find(model_ref)
                except RegistryError as exc:
                    _fail(f"{model_ref} is neither a model folder nor a registry version: {exc}")
            model = load_classifier(folder)
            if model.needs_features:
                _fail("--model: a head on BLIP-2 features needs the project path (--project)")
            classes, proba = model.classes, model.predict_proba(samples)
        feats, what = datamap.embeddings(samples, model)
        m = datamap.build(feats, data.images(), data.labels, classes, proba,
                          names=[p.name for p in data.paths], max_points=max_points, seed=seed,
                          title=f"{labels_csv.parent.name}: {what}")
    png, page = datamap.write(m, out)
    click.echo(f"{len(m.xy)} images, {int(m.suspect.sum())} suspected label errors: wrote {png} and {page}")


@main.group(invoke_without_command=True)
@click.option("--project", type=str, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def versions(ctx, project, model_dir, as_json) -> None:
    """List model versions with their metrics (serving one marked *)."""
    if ctx.invoked_subcommand:
        return
    from labeler.models.openregistry import registry_for

    reg = registry_for(_settings(model_dir=model_dir))
    projects = [project] if project else reg.projects()
    rows = []
    for p in projects:
        current = reg.current(p)
        for m in reg.list(p):
            rows.append({**m, "serving": m["version"] == current})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'':1} {'project':>7} {'version':<12} {'labels':>6} {'acc':>7} {'EER':>7} {'AUC':>7} "
               f"{'zero-shot acc':>13}  created")
    import time as _t
    for r in rows:
        m, z = r.get("metrics") or {}, r.get("zeroshot_metrics") or {}
        fmt = lambda v: f"{v:7.4f}" if isinstance(v, float) else f"{'-':>7}"  # noqa: E731
        click.echo(f"{'*' if r['serving'] else ' '} {r['project']:>7} {r['version']:<12} {r['n_train']:>6} "
                   f"{fmt(m.get('accuracy'))} {fmt(m.get('eer'))} {fmt(m.get('roc_auc'))} "
                   f"{fmt(z.get('accuracy')):>13}  {_t.strftime('%Y-%m-%d %H:%M', _t.localtime(r['created']))}")


@versions.command("export")
@click.argument("version")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path))
def versions_export(version, out, model_dir) -> None:
    """Copy VERSION into a self-contained folder (for `labeler evaluate --model`)."""
    from labeler.models.openregistry import registry_for

    _, path = registry_for(_settings(model_dir=model_dir)).find(version)
    shutil.copytree(path, out)
    click.echo(f"exported {version} to {out}")


@main.command()
@click.argument("version")
@click.option("--project", required=True, type=str, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--no-refresh", is_flag=True, help="Only switch the serving version; leave Label Studio's "
                                                 "predictions and queue as they are.")
@with_studio
def rollback(version, project, no_refresh, url, api_key, model_dir) -> None:
    """Serve VERSION again (``zeroshot`` for the zero-shot model). The backend picks it up at once;
    with a Label Studio configured, every task is re-predicted with it and the queue re-ranked."""
    from labeler.models.openregistry import registry_for

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    registry_for(s).promote(project, None if version in {"zeroshot", "zero-shot"} else version)
    click.echo(f"project {project} now serves {version}")
    if no_refresh or not (s.label_studio_url and s.label_studio_api_key):
        return
    from labeler.studio.preannotate import preannotate

    click.echo(preannotate(_studio(s), int(project), _predictor(s)).summary())


def _certify_default(name: str) -> float:
    from labeler.learning import certify

    return getattr(certify, name)


@main.command("status")
@click.option("--project", required=True, type=str, envvar="LABELER_PROJECT", help="[env LABELER_PROJECT]")
@click.option("--metric", type=click.Choice(["auto", "accuracy", "eer", "eer_macro", "macro_f1"]), default="auto",
              show_default=True, help="auto: macro-F1 for multi-label, EER for two classes, else accuracy.")
@click.option("--target", type=float, help="The metric to reach, on its own scale [default: EER 0.03, "
                                           "accuracy or macro-F1 0.95].")
@click.option("--window", default=100, show_default=True,
              help="Plateau: compare the newest version with the best trained on this many fewer labels.")
@click.option("--eps", type=float, default=lambda: _certify_default("DEFAULT_EPS"), show_default="0.02",
              help="Cost to finish: the share of wrong labels allowed among those the model labels.")
@click.option("--delta", type=float, default=lambda: _certify_default("DEFAULT_DELTA"), show_default="0.05",
              help="Cost to finish: 1 - the confidence of that bound.")
@click.option("--per-class", is_flag=True, help="Cost to finish: plan an audit that bounds every class's error.")
@click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status(project, metric, target, window, eps, delta, per_class, model_dir, as_json) -> None:
    """Can we stop labelling? The learning curve's forecast, whether the last labels still helped, and what
    an audit would leave to people. Reads MODEL_DIR only (no Label Studio)."""
    from labeler.ids import check_project
    from labeler.learning.finishing import finishing_report
    from labeler.models.openregistry import registry_for

    if target is not None and not 0 < target < 1:
        _fail(f"--target must lie strictly between 0 and 1, got {target}")
    s = _settings(model_dir=model_dir)
    reg = registry_for(s)
    project = check_project(project)
    r = finishing_report(reg, s.model_dir, project, metric, target, eps, delta, window, per_class)
    if as_json:
        click.echo(json.dumps(r, indent=2, allow_nan=False))
        return
    serving = reg.current(project)
    click.echo(f"project {project}: held-out {r['metric_name']} per version (the learning curve)")
    click.echo(f"{'':1} {'version':<12} {'labels':>6} {'held out':>8} {r['metric_name']:>10}")
    for p in r["points"]:
        click.echo(f"{'*' if p['version'] == serving else ' '} {p['version']:<12} {p['labels']:>6} "
                   f"{p['size']:>8.0f} {p['value']:>10.4f}")
    if not r["points"]:
        click.echo("  (no trained version with this metric yet)")
    click.echo(f"\nforecast:       {r['forecast']['line']}")
    click.echo(f"plateau:        {r['plateau']['line']}")
    click.echo(f"cost to finish: {r['cost']['line']}")


def _doctor_projects(projects: tuple[int, ...], s: Settings) -> list[int]:
    """``--project``s, else the projects MODEL_DIR knows (those a verified /setup or a training made known)."""
    if projects:
        return list(projects)
    from labeler.errors import LabelerError
    from labeler.models.openregistry import registry_for

    try:
        return [int(p) for p in registry_for(s).projects()]
    except (LabelerError, OSError):
        return []


@main.command("doctor")
@click.option("--project", "projects", multiple=True, type=int, envvar="LABELER_PROJECT",
              help="A project to check (repeat for more) [env LABELER_PROJECT; default: those MODEL_DIR knows].")
@with_studio
@click.option("--backend-url", envvar="LABELER_BACKEND_URL",
              help="This backend's URL as Label Studio calls it [env LABELER_BACKEND_URL, else LABELER_PUBLIC_URL].")
@click.option("--ls-user", envvar="LABELER_LS_USER", help="A Label Studio login, to read its feature flags.")
@click.option("--ls-password", envvar="LABELER_LS_PASSWORD", help="[env LABELER_LS_PASSWORD]")
@click.option("--load-model", is_flag=True, help="Load the zero-shot model (multi-GB for the real one).")
@click.option("--min-free-gb", default=10.0, show_default=True, help="Warn under this much free disk.")
@click.option("--json", "as_json", is_flag=True)
def doctor(projects, url, api_key, model_dir, backend_url, ls_user, ls_password, load_model, min_free_gb,
           as_json) -> None:
    """Check Label Studio, the token, each project's config, ML backend and webhook, the model, disk and Ray:
    one line per check, "ok" or what is wrong and what fixes it. Exits 1 when any check fails."""
    from labeler.doctor import Options, run_checks

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    opts = Options(backend_url=backend_url, ls_user=ls_user, ls_password=ls_password, load_model=load_model,
                   min_free_gb=min_free_gb)
    checks = run_checks(s, _doctor_projects(projects, s), opts)
    if as_json:
        click.echo(json.dumps({"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(c.line())
    if not all(c.ok for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
