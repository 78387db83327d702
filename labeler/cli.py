"""The ``labeler`` command."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import click

from .config import Settings
from .zeroshot import DEFAULT_MODEL


def _settings(**overrides) -> Settings:
    return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """labeler: BLIP-2 pre-annotation, uncertainty ranking and retraining for Label Studio."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of images (default: a small generated set).")
@click.option("--zeroshot-model", default=DEFAULT_MODEL, show_default=True,
              help="Hub id or local folder of a BLIP-2 ITM checkpoint.")
@click.option("--data-dir", default="labeler-demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--port", type=int, help="Label Studio port (default: a free one).")
@click.option("--template", default="binary", show_default=True, help="templates/<name>.xml or a path.")
@click.option("--no-wait", is_flag=True, help="Set up, print, stop the servers and exit (smoke test).")
def demo(images, zeroshot_model, data_dir, port, template, no_wait) -> None:
    """Start Label Studio + the backend and pre-annotate a project of images."""
    from .demo import run_demo

    info = run_demo(images, zeroshot_model, data_dir, port, template, wait=not no_wait)
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
    from .predictor import Predictor

    predictor = Predictor(settings)
    predictor.load_scorer()
    if predictor.scorer_error:
        click.echo(f"warning: {predictor.scorer_error}", err=True)
    return predictor


def _conn(settings: Settings):
    from .predictor import Connection
    from .studio import StudioError, connect

    try:
        connect(settings.label_studio_url, settings.label_studio_api_key)
    except StudioError as exc:
        _fail(str(exc))
    return Connection(settings.label_studio_url, settings.label_studio_api_key)


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
@click.option("--project", required=True, type=int)
@click.option("--classifier", type=click.Choice(["auto", "head", "cnn"]))
@with_studio
def train(project, classifier, url, api_key, model_dir) -> None:
    """Train a new version from the project's annotations (and promote it if not worse)."""
    from .training import TrainingError, train_project

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir, classifier=classifier)
    conn = _conn(s)
    predictor = _predictor(s)
    try:
        out = train_project(predictor, str(project), conn, trigger="labeler train",
                            report=lambda step: click.echo(f"... {step}", err=True))
    except TrainingError as exc:
        _fail(f"training failed, the serving model is unchanged: {exc}")
    m = out.meta.get("metrics") or {}
    click.echo(f"{out.version}: held-out accuracy {m.get('accuracy')}, EER {m.get('eer')}; "
               f"{'promoted' if out.promoted else 'NOT promoted'} ({out.meta['promotion_reason']})")
    if out.promoted:
        from .preannotate import preannotate
        from .studio import connect

        rep = preannotate(connect(conn.hostname, conn.token), project, predictor, conn)
        click.echo(rep.summary())


@main.command()
@click.option("--project", required=True, type=int)
@click.option("--all", "redo", is_flag=True, help="Re-predict tasks that already have a current prediction.")
@click.option("--batch-size", default=64, show_default=True)
@with_studio
def preannotate(project, redo, batch_size, url, api_key, model_dir) -> None:
    """Score every task (resumable) and write predictions in bulk."""
    from .preannotate import preannotate as run
    from .studio import connect

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    conn = _conn(s)
    rep = run(connect(conn.hostname, conn.token), project, _predictor(s), conn,
              only_missing=not redo, batch_size=batch_size)
    click.echo(rep.summary())


@main.command("export")
@click.option("--project", required=True, type=int)
@click.option("--format", "fmt", required=True,
              type=click.Choice(["imagefolder", "csv", "jsonl", "JSON", "JSON_MIN", "CSV", "COCO"]))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--all-tasks", is_flag=True, help="Also tasks with only a prediction (labelled by the model).")
@click.option("--split", help="imagefolder: train/val/test fractions, e.g. 0.8,0.1,0.1 (stratified by class).")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@with_studio
def export_cmd(project, fmt, out, all_tasks, split, seed, overwrite, url, api_key, model_dir) -> None:
    """Export the labelled dataset (written to a temp folder, renamed into place when complete)."""
    from .export import export
    from .studio import connect

    fractions = None
    if split:
        try:
            fractions = tuple(float(x) for x in split.split(","))
            assert len(fractions) == 3 and abs(sum(fractions) - 1) < 1e-6
        except (ValueError, AssertionError):
            _fail(f"--split must be three fractions that sum to 1, got {split!r}")
    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    conn = _conn(s)
    try:
        summary = export(connect(conn.hostname, conn.token), project, fmt, out, conn,
                         only_annotated=not all_tasks, split=fractions, seed=seed, overwrite=overwrite)
    except (FileExistsError, ValueError) as exc:
        _fail(str(exc))
    click.echo(summary.text())


@main.command()
@click.option("--project", required=True, type=int)
@click.option("--no-publish", is_flag=True, help="Only print; do not create the Label Studio tab.")
@with_studio
def review(project, no_publish, url, api_key, model_dir) -> None:
    """Flag annotations the model contradicts with confidence; tab "Suspected label errors"."""
    from .review import review as run
    from .studio import connect
    from .training import TrainingError

    s = _settings(label_studio_url=url, label_studio_api_key=api_key, model_dir=model_dir)
    conn = _conn(s)
    try:
        suspects = run(connect(conn.hostname, conn.token), project, _predictor(s), conn, publish=not no_publish)
    except TrainingError as exc:
        _fail(str(exc))
    click.echo(f"{len(suspects)} suspected label errors" + ("" if no_publish else
               ' (Label Studio tab "Suspected label errors")'))
    for sp in suspects[:50]:
        click.echo(f"  task {sp.task_id}: labelled {sp.given}, model says {sp.suggested} "
                   f"(suspicion {sp.suspicion:.3f})")


@main.group(invoke_without_command=True)
@click.option("--project", type=str)
@click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def versions(ctx, project, model_dir, as_json) -> None:
    """List model versions with their metrics (serving one marked *)."""
    if ctx.invoked_subcommand:
        return
    from .registry import Registry

    reg = Registry(_settings(model_dir=model_dir).model_dir)
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
    from .registry import Registry, RegistryError

    try:
        _, path = Registry(_settings(model_dir=model_dir).model_dir).find(version)
    except RegistryError as exc:
        _fail(str(exc))
    shutil.copytree(path, out)
    click.echo(f"exported {version} to {out}")


@main.command()
@click.argument("version")
@click.option("--project", required=True, type=str)
@click.option("--model-dir", envvar="MODEL_DIR", type=click.Path(path_type=Path))
def rollback(version, project, model_dir) -> None:
    """Serve VERSION again (``zeroshot`` for the zero-shot model). The backend picks it up at once."""
    from .registry import Registry, RegistryError

    reg = Registry(_settings(model_dir=model_dir).model_dir)
    try:
        reg.promote(project, None if version in {"zeroshot", "zero-shot"} else version)
    except RegistryError as exc:
        _fail(str(exc))
    click.echo(f"project {project} now serves {version}")


if __name__ == "__main__":
    main()
