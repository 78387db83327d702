"""/predict under load while training runs, against a real Label Studio and the real gunicorn backend.

8 clients each send /predict with 32 tasks whose images Label Studio hosts
(``/data/upload/...``, already embedded), for ``--seconds``, while training
jobs run back to back; a probe calls /health every 0.25 s. Run twice in the
same process: with the local image store off (every request downloads every
image again: the baseline) and on (known images are not downloaded).

    python benchmarks/predict_load.py [--images N] [--seconds 60] [--clients 8]

Prints p50/p99 latency, errors and the slowest /health per configuration.
Tiny random BLIP-2 (no hub here): latencies measure the service, not the model.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from labeler.studio.client import Studio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labeler.dev.demo import template, upload_images  # noqa: E402
from labeler.dev.localserver import start_backend, start_label_studio  # noqa: E402
from labeler.dev.tiny import build_tiny_blip2  # noqa: E402

EYES24 = ROOT.parent / "shared" / "datasets" / "eyes24"
AUTH = ("ls", "bench-pass")
ADMIN = {"Authorization": "Bearer bench-admin"}


def images(n: int, work: Path) -> tuple[list[Path], list[str]]:
    """Up to ``n`` eyes24 crops with labels, or generated images with random labels."""
    if (EYES24 / "labels.csv").exists():
        rows = [line.split(",") for line in (EYES24 / "labels.csv").read_text().splitlines()[1:]]
        rows = random.Random(0).sample(rows, min(n, len(rows)))
        return [EYES24 / r[0] for r in rows], [r[1].strip() for r in rows]
    from PIL import Image
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        p = work / f"img{i:04d}.png"
        Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(p)
        files.append(p)
    return files, [rng.choice(["open", "closed"]) for _ in range(n)]


def run(studio, token: str, model: Path, files: list[Path], labels: list[str], store_mb: str,
        seconds: float, clients: int, work: Path) -> dict:
    model_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"model-{store_mb}-"))
    env = {"MODEL_DIR": str(model_dir), "LABELER_ZEROSHOT_MODEL": str(model), "HF_HUB_OFFLINE": "1",
           "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "LABELER_ADMIN_TOKEN": "bench-admin",
           "LABELER_IMAGE_CACHE_MB": store_mb, "LABELER_MIN_PER_CLASS": "3", "LABELER_SELF_TRAIN_POOL": "200"}
    backend = start_backend(env, log_dir=model_dir)
    try:
        ls = Studio(studio.url, token)
        proj = ls.projects.create(title=f"load-{store_mb}", label_config=template("binary"))
        upload_images(studio.url, token, proj.id, files)
        ls.ml.create(project=proj.id, url=backend.url, title="labeler", auth_method="BASIC_AUTH",
                     basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])
        tasks = [t.model_dump() if hasattr(t, "model_dump") else dict(t)
                 for t in ls.tasks.list(project=proj.id, fields="all")]
        by_name = {f.name: lab for f, lab in zip(files, labels)}
        for t in tasks[: len(tasks) // 3]:  # labels to train on
            name = t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]
            ls.annotations.create(id=t["id"], result=[{"from_name": "choice", "to_name": "image", "type": "choices",
                                                       "value": {"choices": [by_name[name]]}}])
        lean = [{"id": t["id"], "data": t["data"]} for t in tasks]
        body = {"label_config": template("binary"), "project": f"{proj.id}.1"}
        requests.post(f"{backend.url}/predict", json={**body, "tasks": lean}, auth=AUTH, timeout=600)  # embed all

        stop = time.monotonic() + seconds
        lat: list[float] = []
        codes: list[int] = []
        health: list[float] = []
        trainings = 0

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = requests.post(f"{backend.url}/predict", json={**body, "tasks": rng.sample(lean, 32)},
                                      auth=AUTH, timeout=120)
                    ok = r.status_code == 200 and all(x["result"] for x in r.json()["results"])
                    codes.append(r.status_code if ok else -r.status_code)
                except requests.RequestException:
                    codes.append(0)
                lat.append(time.perf_counter() - t0)

        def trainer() -> None:
            nonlocal trainings
            while time.monotonic() < stop:
                st = requests.get(f"{backend.url}/admin/projects/{proj.id}/job", headers=ADMIN).json()
                if st.get("status") not in {"queued", "running"}:
                    requests.post(f"{backend.url}/admin/projects/{proj.id}/train", headers=ADMIN)
                    trainings += 1
                time.sleep(0.5)

        threads = [threading.Thread(target=trainer)]
        threads[0].start()
        time.sleep(1.0)  # training under way first
        with ThreadPoolExecutor(clients) as pool:
            for i in range(clients):
                pool.submit(client, i)
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    requests.get(f"{backend.url}/health", timeout=5)
                    health.append(time.perf_counter() - t0)
                except requests.RequestException:
                    health.append(5.0)
                time.sleep(0.25)
        threads[0].join()
        job = requests.get(f"{backend.url}/admin/projects/{proj.id}/job", headers=ADMIN).json()
    finally:
        backend.stop()
    lat.sort()
    return {"requests": len(lat), "errors": sum(1 for c in codes if c != 200), "p50": lat[len(lat) // 2],
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "health_max": max(health),
            "health_over_1s": sum(1 for h in health if h > 1.0), "trainings_started": trainings,
            "last_job": job.get("status")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="predict-load-"))
    files, labels = images(args.images, work)
    model = build_tiny_blip2(work / "tiny")
    token = "bench-token-0123456789"
    studio = start_label_studio(work / "ls", "bench@example.com", "bench-pass-123", token)
    try:
        for name, mb in (("image store off (baseline)", "0"), ("image store on", "2048")):
            r = run(studio, token, model, files, labels, mb, args.seconds, args.clients, work)
            print(f"{name:28s} requests {r['requests']:4d}  errors {r['errors']}  p50 {r['p50']:.3f} s  "
                  f"p99 {r['p99']:.3f} s  /health max {r['health_max']:.3f} s ({r['health_over_1s']} over 1 s)  "
                  f"trainings {r['trainings_started']} (last {r['last_job']})", flush=True)
    finally:
        studio.stop()


if __name__ == "__main__":
    main()
