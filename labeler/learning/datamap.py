"""``labeler map``: a 2-D map of the dataset's image embeddings.

Each image is a point, placed by t-SNE on the embedding the project's model
uses (BLIP-2's pooled image features with a zero-shot model, else the CNN's
pooled features: the trained CNN's if there is one, the frozen ImageNet one
otherwise). Points are coloured by the human label, the model's prediction,
or its uncertainty; suspected label errors (confident learning,
:func:`labeler.learning.label_errors.find_label_issues`, or the flags of the last
``labeler review``) are marked. Outputs: a PNG for reports and one
self-contained HTML page (no external scripts) that shows each image's
thumbnail, label, prediction and uncertainty on hover.

Projection: scikit-learn's t-SNE (Barnes-Hut), PCA-initialised and seeded, so
a map is reproducible. scikit-learn is already a dependency and is well kept;
UMAP (umap-learn) would add numba and llvmlite and a JIT warm-up on every
run for a layout that, at the few thousand points a readable map holds,
shows the same clusters. Above ``max_points`` images a stratified sample is
drawn (every suspected error is kept).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeler.learning.plotting import headless_matplotlib
from labeler.models.uncertainty import uncertainty
from labeler.studio.client import Studio


@dataclass
class MapData:
    """One row per image. ``label``/``pred`` are class names or "" when unknown."""

    xy: np.ndarray            # (N, 2) projected coordinates
    label: list[str]
    pred: list[str]
    uncertainty: np.ndarray   # (N,) margin uncertainty of the model, NaN without one
    suspect: np.ndarray       # (N,) bool: suspected label error
    names: list[str]          # what the hover says the image is (file or task id)
    thumbs: list[str]         # data: URLs (PNG) of small thumbnails
    classes: list[str]
    title: str = ""


def project_2d(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE of L2-normalised ``features`` to 2-D (PCA to 50 dimensions first when wider).

    Perplexity is capped at ``(N - 1) / 3`` so small sets work.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    f = np.asarray(features, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
    n = len(f)
    if n < 4:
        return np.c_[np.arange(n, dtype=float), np.zeros(n)]
    if f.shape[1] > 50 and n > 50:
        f = PCA(50, random_state=seed).fit_transform(f)
    perp = float(min(perplexity, max(1.0, (n - 1) / 3)))
    return TSNE(2, perplexity=perp, init="pca", random_state=seed, learning_rate="auto").fit_transform(f)


def subsample(labels: Sequence[str], suspect: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices to draw: all if few enough, else every suspect plus a per-label stratified random sample."""
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = set(np.flatnonzero(suspect).tolist())
    rest = np.array([i for i in range(n) if i not in keep])
    quota = max(0, max_points - len(keep))
    labs = np.array(labels)[rest]
    for lab in np.unique(labs):
        ix = rest[labs == lab]
        take = int(round(quota * len(ix) / len(rest)))
        keep.update(rng.choice(ix, size=min(take, len(ix)), replace=False).tolist())
    return np.array(sorted(keep))


def thumbnail(image, size: int = 96) -> str:
    im = image.convert("RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build(features: np.ndarray, images: Sequence, labels: Sequence[str], classes: Sequence[str],
          proba: np.ndarray | None = None, suspect: np.ndarray | None = None, names: Sequence[str] | None = None,
          max_points: int = 5000, seed: int = 0, title: str = "") -> MapData:
    """Project and annotate; ``labels`` may hold "" for unlabelled images.

    Without ``suspect``, suspected errors are found by confident learning on
    ``proba`` among the labelled images (in-sample probabilities: a trained
    model agrees with its own training labels, so this finds fewer than
    ``labeler review``'s out-of-fold ones).
    """
    from labeler.learning.label_errors import find_label_issues

    classes = list(classes)
    n = len(images)
    labels = [lab or "" for lab in labels]
    # NaN rows: no prediction (without proba, none is scored)
    proba = np.full((n, 1), np.nan) if proba is None else np.asarray(proba, dtype=np.float64)
    scored = np.isfinite(proba).all(1)
    if suspect is None:
        suspect = np.zeros(n, bool)
        lab_ix = np.array([i for i, lab in enumerate(labels) if lab in classes and scored[i]], dtype=int)
        if len(lab_ix):
            y = np.array([classes.index(labels[i]) for i in lab_ix])
            suspect[lab_ix[find_label_issues(proba[lab_ix], y)]] = True
    keep = subsample(labels, suspect, max_points, seed)
    xy = project_2d(np.asarray(features)[keep], seed)
    pred = [classes[int(proba[i].argmax())] if scored[i] else "" for i in keep]
    unc = np.array([uncertainty(proba[i][None], "margin")[0] if scored[i] else np.nan for i in keep])
    names = list(names) if names is not None else [str(i) for i in range(n)]
    return MapData(xy, [labels[i] for i in keep], pred, unc, np.asarray(suspect)[keep],
                   [names[i] for i in keep], [thumbnail(images[i]) for i in keep], classes, title)


def _colours(classes: Sequence[str]) -> dict[str, str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    out = {c: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, c in enumerate(classes)}
    out[""] = "#bbbbbb"  # unlabelled / no prediction
    return out


def write_png(m: MapData, path: Path) -> Path:
    """Three panels (human label, prediction, uncertainty); suspected errors circled in black."""
    headless_matplotlib()
    import matplotlib.pyplot as plt

    colours = _colours(m.classes)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4))
    for ax, key, title in ((axes[0], m.label, "human label"), (axes[1], m.pred, "model prediction")):
        for c in ["", *m.classes]:
            ix = [i for i, v in enumerate(key) if v == c]
            if ix:
                ax.scatter(m.xy[ix, 0], m.xy[ix, 1], s=9, c=colours[c], label=c or "none", alpha=0.8, linewidths=0)
        ax.set_title(title)
        ax.legend(markerscale=2, fontsize=7, loc="best")
    sc = axes[2].scatter(m.xy[:, 0], m.xy[:, 1], s=9, c=m.uncertainty, cmap="viridis", vmin=0, vmax=1, linewidths=0)
    fig.colorbar(sc, ax=axes[2], label="margin uncertainty")
    axes[2].set_title("uncertainty")
    s = np.flatnonzero(m.suspect)
    for ax in axes:
        if len(s):
            ax.scatter(m.xy[s, 0], m.xy[s, 1], s=40, facecolors="none", edgecolors="black", linewidths=1.0,
                       label="suspected label error" if ax is axes[0] else None)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(s):
        axes[0].legend(markerscale=2, fontsize=7, loc="best")
    fig.suptitle(f"{m.title} ({len(m.xy)} images, t-SNE; {len(s)} suspected label errors circled)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<style>
body{font:14px system-ui,sans-serif;margin:12px;color:#222}
#wrap{position:relative;display:inline-block}
canvas{border:1px solid #ccc;background:#fff}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #888;padding:6px;display:none;
     box-shadow:0 2px 6px #0003;font-size:12px;max-width:220px}
#tip img{display:block;max-width:96px;max-height:96px;image-rendering:pixelated;margin-bottom:4px}
.legend span{display:inline-block;margin-right:10px}.legend i{display:inline-block;width:10px;height:10px;
     margin-right:4px;border-radius:5px}
</style></head><body>
<h3>%(title)s</h3>
<p>Colour by <select id="by"><option value="label">human label</option><option value="pred">model prediction</option>
<option value="unc">uncertainty</option></select>
<label><input type="checkbox" id="only"> only suspected label errors</label>
&mdash; %(n)d images, t-SNE; suspected label errors have a black ring. Hover a point for its image.</p>
<div class="legend" id="legend"></div>
<div id="wrap"><canvas id="c" width="900" height="700"></canvas><div id="tip"></div></div>
<script id="data" type="application/json">%(data)s</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const cv = document.getElementById('c'), ctx = cv.getContext('2d'), tip = document.getElementById('tip');
const pad = 20, xs = D.xy.map(p => p[0]), ys = D.xy.map(p => p[1]);
const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
const px = D.xy.map(p => [pad + (p[0] - x0) / ((x1 - x0) || 1) * (cv.width - 2 * pad),
                          pad + (p[1] - y0) / ((y1 - y0) || 1) * (cv.height - 2 * pad)]);
function viridis(t) { if (t === null) return '#bbbbbb';
  const s = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]], k = Math.min(3.999, Math.max(0, t) * 4),
  i = Math.floor(k), f = k - i, c = s[i].map((v, j) => Math.round(v + (s[i + 1][j] - v) * f));
  return `rgb(${c})`; }
function colour(i) { const by = document.getElementById('by').value;
  return by === 'unc' ? viridis(D.unc[i]) : (D.colours[D[by][i]] || '#bbbbbb'); }
function draw() {
  const only = document.getElementById('only').checked, by = document.getElementById('by').value;
  ctx.clearRect(0, 0, cv.width, cv.height);
  for (let i = 0; i < px.length; i++) { if (only && !D.suspect[i]) continue;
    ctx.beginPath(); ctx.arc(px[i][0], px[i][1], 3.5, 0, 7); ctx.fillStyle = colour(i); ctx.fill();
    if (D.suspect[i]) { ctx.beginPath(); ctx.arc(px[i][0], px[i][1], 6, 0, 7); ctx.strokeStyle = '#000';
      ctx.lineWidth = 1.3; ctx.stroke(); } }
  const lg = document.getElementById('legend'); lg.innerHTML = '';
  const items = by === 'unc' ? [['certain (0)', viridis(0)], ['uncertain (1)', viridis(1)]]
    : Object.entries(D.colours).map(([k, v]) => [k || 'none', v]);
  for (const [k, v] of items) { const s = document.createElement('span'), b = document.createElement('i');
    b.style.background = v; s.appendChild(b); s.appendChild(document.createTextNode(k)); lg.appendChild(s); } }
function esc(s) { const d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
cv.addEventListener('mousemove', e => { const r = cv.getBoundingClientRect(), mx = e.clientX - r.left,
  my = e.clientY - r.top; let best = -1, bd = 64;
  for (let i = 0; i < px.length; i++) { const d = (px[i][0] - mx) ** 2 + (px[i][1] - my) ** 2;
    if (d < bd) { bd = d; best = i; } }
  if (best < 0) { tip.style.display = 'none'; return; }
  tip.innerHTML = `<img src="${D.thumbs[best]}"><b>${esc(D.names[best])}</b><br>label: ${esc(D.label[best] || '-')}` +
    `<br>model: ${esc(D.pred[best] || '-')}<br>uncertainty: ${D.unc[best] === null ? '-' : D.unc[best].toFixed(3)}` +
    (D.suspect[best] ? '<br><b>suspected label error</b>' : '');
  tip.style.left = (mx + 14) + 'px'; tip.style.top = (my + 14) + 'px'; tip.style.display = 'block'; });
cv.addEventListener('mouseleave', () => tip.style.display = 'none');
document.getElementById('by').onchange = draw; document.getElementById('only').onchange = draw; draw();
</script></body></html>
"""


def write_html(m: MapData, path: Path) -> Path:
    """One self-contained page: the points, thumbnails and the script are all inline."""
    unc = [None if not np.isfinite(u) else round(float(u), 4) for u in m.uncertainty]
    data = {"xy": np.round(m.xy, 3).tolist(), "label": m.label, "pred": m.pred, "unc": unc,
            "suspect": [bool(s) for s in m.suspect], "names": m.names, "thumbs": m.thumbs,
            "colours": _colours(m.classes)}
    # JSON inside <script>: "</" must not end the element early (names come from untrusted tasks).
    text = json.dumps(data).replace("</", "<\\/")
    page = _PAGE % {"title": html.escape(m.title or "dataset map"), "n": len(m.xy), "data": text}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def cnn_features(model, samples: Sequence) -> np.ndarray:
    """Pooled features of a trained :class:`~labeler.models.classifiers.CNNClassifier` (before its last layer)."""
    import torch

    from labeler.models.classifiers.pixels import logits_input, to_tensor

    out = []
    device = next(model.net_.parameters()).device  # where it was trained (a GPU when there is one)
    with torch.inference_mode():
        for start in range(0, len(samples), 256):
            x = logits_input(to_tensor(samples[start:start + 256], model.input_size)).to(device)
            out.append(torch.nn.functional.adaptive_avg_pool2d(model.net_.features(x), 1).flatten(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1280))


def embeddings(samples: Sequence, model=None) -> tuple[np.ndarray, str]:
    """(features, what they are) for the map: BLIP-2 pooled features where the samples carry them,
    else the trained CNN's pooled features, else the frozen ImageNet MobileNetV2's."""
    from labeler.models.strategies import imagenet_features

    if samples and all(getattr(s, "features", None) is not None for s in samples):
        return np.stack([np.asarray(s.features, dtype=np.float32).ravel() for s in samples]), "BLIP-2 image features"
    model = (getattr(model, "members_", None) or [model])[0]  # of an ensemble, its first member's
    if model is not None and getattr(model, "kind", "") == "cnn" and getattr(model, "net_", None) is not None:
        return cnn_features(model, samples), "the trained CNN's features"
    return imagenet_features(samples, dim=0), "ImageNet MobileNetV2 features"


def write(m: MapData, out: Path) -> tuple[Path, Path]:
    """``map.png`` and ``map.html`` in ``out``."""
    return write_png(m, Path(out) / "map.png"), write_html(m, Path(out) / "map.html")


def project_map(studio: Studio, project: int, predictor, max_points: int = 5000, seed: int = 0) -> MapData:
    """The map of a Label Studio project with its serving model (zero-shot or trained).

    Suspected errors are the flags of the last ``labeler review`` (out-of-fold)
    where there are any, else confident learning on the serving model's
    probabilities. Images that cannot be fetched are left out (logged by the predictor).
    """
    from labeler.learning.review import FIELD as SUSPICION
    from labeler.studio.tasks import iter_tasks, pick_label, project_config

    config = project_config(studio, project)
    tasks = list(iter_tasks(studio, project))
    labels = [pick_label(t.get("annotations") or [], config) or "" for t in tasks]
    flags = np.array([_positive((t.get("data") or {}).get(SUSPICION) if isinstance(t.get("data"), dict) else None)
                      for t in tasks], dtype=bool)
    keep = subsample(labels, flags, max_points, seed)  # before downloading: only what is drawn
    tasks, labels, flags = [tasks[i] for i in keep], [labels[i] for i in keep], flags[keep]
    items = predictor.samples([config.image_ref(t) for t in tasks], studio.conn)
    ok = [i for i, it in enumerate(items) if it.sample is not None]
    _, scored = predictor.score_items(str(project), [items[i] for i in ok], config)
    classes = list(config.classes)
    proba = np.array([it.proba if it.proba is not None else np.full(len(classes), np.nan) for it in scored])
    _, model = predictor.classifier(str(project))
    samples = [it.sample for it in scored]
    feats, what = embeddings(samples, model)
    reviewed = bool(flags.any())
    return build(feats, [s.image for s in samples], [labels[i] for i in ok], classes, proba,
                 suspect=flags[ok] if reviewed else None, names=[f"task {tasks[i]['id']}" for i in ok],
                 max_points=max_points, seed=seed, title=f"project {project}: {what}")


def _positive(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False
