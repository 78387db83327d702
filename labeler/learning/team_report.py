"""A project's annotator quality report (``labeler annotators``, the admin page's "Annotators")."""

from __future__ import annotations

import numpy as np

from labeler.learning.annotators import quality_report
from labeler.studio.client import Studio
from labeler.studio.tasks import iter_tasks, project_config
from labeler.studio.team import consensus_of, team_of, user_emails


def project_report(studio: Studio, project: int, control_rate: float = 0.0, known: dict[int, str] | None = None,
                   votes: dict[int, np.ndarray] | None = None) -> dict:
    """Per annotator: accuracy with its interval and source, confusion, kappa with each other, speed,
    counts and automation bias; Krippendorff's alpha; and ``unavailable``: what the data cannot give.
    ``votes``: the classifier's out-of-fold probabilities from the last training (:func:`load_votes`),
    one more voter in the consensus as in training."""
    config = project_config(studio, project)
    if config.multiple:
        return {"project": project, "annotators": [], "unavailable": [
            "annotator quality: multi-label projects are not modelled yet (one class per annotation only)"]}
    team = team_of(list(iter_tasks(studio, project)), config, control_rate, known, user_emails(studio))
    _, c = consensus_of(team, votes)
    report = quality_report(team.names, team.classes, team.labels, c, team.lead_times, team.shown, team.control,
                            team.gold)
    return {"project": project, "classes": team.classes, **report}


def report_text(report: dict) -> list[str]:
    """The report as lines for a terminal."""
    lines = [f"{'annotator':>24} {'labels':>6} {'honeypots':>9} {'accuracy (95% interval, source)':>44} "
             f"{'median s':>8} {'blind':>6} {'preann.':>7} {'took wrong':>10}"]
    for r in report["annotators"]:
        acc = "-" if r["accuracy"] is None else (f"{r['accuracy']:.3f} ({r['accuracy_low']:.3f}-{r['accuracy_high']:.3f}, "
                                                f"{r['accuracy_source']})")
        b = r["automation_bias"]
        cell = [("-" if x["rate"] is None else f"{x['rate']:.2f}") for x in (b["blind"], b["preannotated"], b["accepted_wrong"])]
        speed = "-" if r["median_lead_time_s"] is None else f"{r['median_lead_time_s']:.1f}"
        lines.append(f"{r['annotator']:>24} {r['labels']:>6} {r['honeypots']:>9} {acc:>44} {speed:>8} "
                     f"{cell[0]:>6} {cell[1]:>7} {cell[2]:>10}")
    alpha = report.get("krippendorff_alpha")
    lines.append(f"Krippendorff's alpha: {'-' if alpha is None else f'{alpha:.3f}'}; consensus: {report.get('method')}, "
                 f"{report.get('tasks', 0)} tasks, {report.get('tasks_with_overlap', 0)} with two labels or more, "
                 f"{report.get('honeypot_tasks', 0)} honeypots, {report.get('control_tasks', 0)} controls")
    if report.get("model_accuracy") is not None:
        lines.append(f"the classifier voted too (out-of-fold, last training): estimated accuracy {report['model_accuracy']:.3f}")
    for r in report["annotators"]:
        kappas = ", ".join(f"{o} {'-' if k is None else f'{k:.2f}'}" for o, k in r["kappa"].items())
        if kappas:
            lines.append(f"kappa {r['annotator']}: {kappas}")
    lines += [f"not available: {u}" for u in report.get("unavailable", [])]
    return lines
