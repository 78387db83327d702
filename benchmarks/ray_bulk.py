"""Issue 14 figures, each against its baseline in the same run (tiny BLIP-2, loopback Label Studio):

1. predictions/s into Label Studio with and without the memory-efficient import flag
   (``fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short``);
2. tasks/s of the bulk path in-process vs on a local Ray cluster (2 CPUs, one declared GPU).

    python benchmarks/ray_bulk.py [--tasks 300] [--imports 3000]

The tiny model makes scoring nearly free, so (2) measures the pipeline's overhead, not a GPU's speed.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from labeler.config import Settings  # noqa: E402
from labeler.dev.demo import template  # noqa: E402
from labeler.dev.localserver import FAST_IMPORT_FLAG, start_label_studio  # noqa: E402
from labeler.dev.tiny import build_tiny_blip2  # noqa: E402
from labeler.models.predictor import Predictor  # noqa: E402
from labeler.studio.client import Studio  # noqa: E402
from labeler.studio.preannotate import preannotate  # noqa: E402

TOKEN = "labeler-bench-token-0123456789"


def data_url(seed: int) -> str:
    arr = (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def import_rate(root: Path, flag: bool, n: int, project_size: int, batch: int) -> float:
    """Predictions/s over ``n`` imports in batches of ``batch`` into a ``project_size``-task project."""
    os.environ["LABELER_LS_FAST_IMPORT"] = "1" if flag else "0"
    server = start_label_studio(root / f"ls-{int(flag)}", "bench@example.com", "bench-pass-123", TOKEN)
    try:
        ls = Studio(server.url, TOKEN, timeout=600)
        pid = ls.projects.create(title="imports", label_config=template("binary")).id
        for start in range(0, project_size, 5000):
            ls.projects.import_tasks(id=pid, request=[{"image": f"/data/x{i}.png"}
                                                      for i in range(start, min(project_size, start + 5000))])
        ids = []
        page = 1
        while len(ids) < n:
            r = ls.request("GET", "api/tasks/", params={"project": pid, "page": page, "page_size": 1000,
                                                                 "include": "id"}).json()["tasks"]
            ids += [t["id"] for t in r]
            page += 1
        preds = [{"task": i, "model_version": "bench", "score": 0.5, "result": [{
            "from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["open"]}}]}
            for i in ids[:n]]
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            ls.projects.import_predictions(id=pid, request=preds[start:start + batch])
        return n / (time.perf_counter() - t0)
    finally:
        server.stop()


def bulk_rates(root: Path, n: int) -> dict[str, float]:
    import ray

    from labeler.distributed.bulk import preannotate_ray

    tiny = build_tiny_blip2(root / "tiny")
    os.environ["LABELER_LS_FAST_IMPORT"] = "1"
    server = start_label_studio(root / "ls-bulk", "bench@example.com", "bench-pass-123", TOKEN)
    out = {}
    try:
        ls = Studio(server.url, TOKEN, timeout=600)
        tasks = [{"image": data_url(i)} for i in range(n)]
        projects = {}
        for name in ("local", "ray"):
            projects[name] = ls.projects.create(title=name, label_config=template("binary")).id
            ls.projects.import_tasks(id=projects[name], request=tasks)
        settings = Settings(model_dir=root / "md-local", zeroshot_model=str(tiny), local_files_only=True)
        t0 = time.perf_counter()
        predictor = Predictor(settings)
        predictor.load_scorer()
        rep = preannotate(ls, projects["local"], predictor, progress=False)
        out["in-process s"] = time.perf_counter() - t0
        out["in-process tasks/s"] = rep.predicted / out["in-process s"]
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
        out["ray.init s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = preannotate_ray(ls, projects["ray"], Settings(model_dir=root / "md-ray", zeroshot_model=str(tiny),
                                                            local_files_only=True), progress=False)
        out["ray s"] = time.perf_counter() - t0
        out["ray tasks/s"] = rep.predicted / out["ray s"]
        ray.shutdown()
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--imports", type=int, default=3000)
    ap.add_argument("--project-size", type=int, default=20000)
    ap.add_argument("--import-batch", type=int, default=100)
    ap.add_argument("--skip-imports", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_imports:
            before = import_rate(root, False, args.imports, args.project_size, args.import_batch)
            after = import_rate(root, True, args.imports, args.project_size, args.import_batch)
            print(f"predictions/s into Label Studio ({args.imports} into a {args.project_size}-task project, "
                  f"batches of {args.import_batch}): without {FAST_IMPORT_FLAG}: {before:.0f}/s; with it: {after:.0f}/s "
                  f"({after / before:.1f}x)", flush=True)
        for k, v in bulk_rates(root, args.tasks).items():
            print(f"bulk path, {args.tasks} tasks: {k} = {v:.2f}", flush=True)


if __name__ == "__main__":
    main()
