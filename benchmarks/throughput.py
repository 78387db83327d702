"""Zero-shot throughput, cache re-scoring and /predict latency (issue 4).

(a) baseline: the model's own forward on image-prompt pairs (the vision tower
    runs once per pair), inputs from the transformers processor, batched;
(b) labeler: decode, our preprocessing, the vision tower once per image, the
    Q-Former/ITM head per prompt.
Both start from PNG bytes and score two prompts. Then: re-scoring the same
images against changed prompts from the embedding cache, and the backend's
/predict latency over HTTP for 32 cached tasks.

GPU options (issue 15): ``--compile`` adds a pass with the vision tower's
layers compiled (``ZeroShotScorer.compile_vision``) beside the eager one;
``--tier-gb`` keeps hidden states on the GPU (``labeler.models.devicetier``), so
re-scoring reads no disk; it is then measured both from the GPU tier and from
disk (pinned-memory staging; the files are in the page cache, just written).
``benchmarks/gpu_bench.sh`` runs the old code and this one on a GPU machine.

    python benchmarks/throughput.py --model full --images 6          # CPU, full-size architecture
    python benchmarks/throughput.py --model tiny --images 256        # pipeline overhead
    python benchmarks/throughput.py --model full --images 4096 --batch 256 --device cuda --skip-baseline \
        --compile --tier-gb 16
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from labeler.dev.tiny import build_tiny_blip2, full_size_random_blip2
from labeler.models import cpufast
from labeler.models.cache import EmbeddingCache, content_key
from labeler.models.devicetier import DeviceTier
from labeler.models.zeroshot import ImageEmbeddings, ZeroShotScorer, pick_device, pick_dtype, softmax

PROMPTS = {"open": ["open eye or pupil"], "closed": ["closed eye"]}
NEW_PROMPTS = {"open": ["an eye with a visible pupil"], "closed": ["an eyelid covering the eye"]}
ONE_NEW = {"open": ["open eye or pupil"], "closed": ["shut eyelids"]}
DISK_PROMPTS = {"open": ["a wide open eye"], "closed": ["a blinking eye"]}  # new again, for the disk path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_pngs(n: int) -> list[bytes]:
    eyes = Path(__file__).resolve().parents[2] / "shared/datasets/eyes24/images"
    files = sorted(eyes.glob("*.png"))[:n] if eyes.exists() else []
    out = [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    while len(out) < n:  # no dataset here: random 24x24 crops
        buf = io.BytesIO()
        Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def baseline(scorer: ZeroShotScorer, pngs: list[bytes], batch: int) -> float:
    prompts = [p for ps in PROMPTS.values() for p in ps]
    t = time.perf_counter()
    for start in range(0, len(pngs), batch):
        images = [Image.open(io.BytesIO(b)) for b in pngs[start:start + batch]]
        pairs_img = [im for im in images for _ in prompts]
        pairs_txt = [p for _ in images for p in prompts]
        inputs = scorer.processor(images=pairs_img, text=pairs_txt, return_tensors="pt", padding=True)
        inputs = {k: v.to(scorer.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(scorer.dtype)
        with torch.inference_mode():
            out = scorer.model(**inputs, use_image_text_matching_head=True)
        out.logits_per_image.float().cpu()
    sync(scorer.device)
    return time.perf_counter() - t


def ours(scorer: ZeroShotScorer, pngs: list[bytes], cache: EmbeddingCache | None = None,
         workers: int = 4, evidence: list[np.ndarray] | None = None) -> float:
    """Seconds for the labeler's path; ``evidence`` (if given) receives each batch's class evidence (n, C)."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    bs = scorer.batch_size
    with ThreadPoolExecutor(workers) as pool:  # decode + resize off the main thread, as the prefetch does
        def prep(chunk):
            return scorer.pixels([Image.open(io.BytesIO(b)) for b in chunk])
        futures = [pool.submit(prep, pngs[i:i + bs]) for i in range(0, len(pngs), bs)]
        for i, fut in enumerate(futures):
            with torch.inference_mode():
                out = scorer.model.vision_model(pixel_values=scorer.normalize(fut.result()))
            if cache is None:
                scores = scorer.class_scores(out.last_hidden_state, PROMPTS)
                softmax(scores)
                if evidence is not None:
                    evidence.append(scores)
            else:
                keys = [content_key(b) for b in pngs[i * bs:(i + 1) * bs]]
                softmax(scorer.class_scores(out.last_hidden_state, PROMPTS, keys, cache.logits))
                cache.put_embeddings(keys, ImageEmbeddings(out.last_hidden_state, out.pooler_output))
    if cache is not None:
        cache.flush()
    sync(scorer.device)
    return time.perf_counter() - t


def rescore_from_cache(scorer: ZeroShotScorer, pngs: list[bytes], cache: EmbeddingCache, prompts) -> float:
    """As the predictor does: embeddings (memory-mapped) and memoised logits from the cache."""
    t = time.perf_counter()
    keys = [content_key(b) for b in pngs]
    hidden = [h for h, _ in cache.get_many(keys, 16)]
    softmax(scorer.class_scores(hidden, prompts, keys, cache.logits))
    sync(scorer.device)
    return time.perf_counter() - t


def cpu_name() -> str:
    """The CPU's model name and what matters here: torch's capability level and any bf16 instructions."""
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    bf16 = sorted(cpufast.BF16_FLAGS & cpufast.cpu_flags())
    return (f"{name}, {os.cpu_count()} cores, torch capability {torch.backends.cpu.get_cpu_capability()}, "
            f"bf16 instructions: {', '.join(bf16) or 'none'}")


def timed_evidence(scorer: ZeroShotScorer, pngs: list[bytes], workers: int) -> tuple[float, np.ndarray]:
    ours(scorer, pngs[: scorer.batch_size], workers=workers)  # warm-up
    evidence: list[np.ndarray] = []
    return ours(scorer, pngs, workers=workers, evidence=evidence), np.concatenate(evidence)


def fast_paths(scorer: ZeroShotScorer, pngs: list[bytes], t_pairs: float | None, t_fp32: float,
               fp32: np.ndarray, forced: list[str], workers: int) -> None:
    """The CPU fast paths: each of ``forced`` whatever the CPU has, then the automatic choice (with its
    calibration check against fp32); times, speed-ups and top-1 agreement with the fp32 pass."""
    print(f"\nCPU fast paths (vision tower's linear layers) on {cpu_name()}", flush=True)
    rows = [("fp32", t_fp32, fp32)]
    for path in forced:
        swapped = cpufast.swap_linears(scorer.model.vision_model, cpufast.FAST_LINEARS[path])
        rows.append((f"{path} (forced)", *timed_evidence(scorer, pngs, workers)))
        cpufast.restore(swapped)
        print(f"measured {path} (forced)", flush=True)
    t = time.perf_counter()
    scorer.precision = cpufast.automatic(scorer)
    print(f"automatic choice: {scorer.precision.line()} (calibration check: {time.perf_counter() - t:.1f} s, "
          "once per load)", flush=True)
    if scorer.precision.path != "fp32":
        rows.append((f"{scorer.precision.path} (automatic)", *timed_evidence(scorer, pngs, workers)))
    print(f"{'labeler, vision tower':<26} {'seconds':>8} {'images/s':>9} {'vs pairwise':>12} {'vs fp32':>8} "
          f"{'top-1 = fp32':>13}")
    for name, secs, evidence in rows:
        agree = np.mean(evidence.argmax(axis=1) == fp32.argmax(axis=1))
        vs_pairs = f"{t_pairs / secs:.2f}x" if t_pairs else "-"
        print(f"{name:<26} {secs:>8.2f} {len(pngs) / secs:>9.2f} {vs_pairs:>12} {t_fp32 / secs:>7.2f}x "
              f"{100 * agree:>12.1f}%")
    margin = fp32[:, 0] - fp32[:, 1]  # how far from a tie each image is, against how far rounding moved it
    moved = max(np.abs((e[:, 0] - e[:, 1]) - margin).max() for _, _, e in rows)
    print(f"fp32 picked {list(PROMPTS)[0]!r} for {(margin > 0).sum()} of {len(pngs)} images; evidence margin "
          f"{margin.min():+.3f} .. {margin.max():+.3f} (std {margin.std():.3f}); the fast paths moved it by at most "
          f"{moved:.3f}")
    print(f"top-1 agreement: the winning class of {len(pngs)} images (2 classes) against the fp32 pass. With "
          "random weights it is a numeric check (does rounding change answers?), not a quality claim.")


def predict_latency(model_dir: Path, model_path: str, n_tasks: int = 32, repeats: int = 30) -> list[float]:
    """Median/p99 of POST /predict over real HTTP for ``n_tasks`` inline-image tasks (cached after the first)."""
    import requests
    from werkzeug.serving import make_server

    from labeler.config import Settings
    from labeler.dev.demo import template
    from ml_backend import create_app

    app = create_app(Settings(model_dir=model_dir, zeroshot_model=model_path, local_files_only=True),
                     load_in_background=False)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}/predict"
    tasks = [{"id": i, "data": {"image": "data:image/png;base64," + base64.b64encode(b).decode()}}
             for i, b in enumerate(load_pngs(n_tasks))]
    body = {"tasks": tasks, "label_config": template("binary"), "project": "1.0"}
    requests.post(url, json=body).raise_for_status()  # fills the cache
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = requests.post(url, json=body)
        times.append(time.perf_counter() - t)
        assert len(r.json()["results"]) == n_tasks
    server.shutdown()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="full", help="full (random full-size), tiny, or a checkpoint folder")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--latency", action="store_true", help="also measure /predict latency (tiny or folder model)")
    ap.add_argument("--compile", action="store_true", help="also measure with the vision layers compiled")
    ap.add_argument("--tier-gb", type=float, default=0.0, help="GPU tier of hidden states (GiB); 0: none")
    ap.add_argument("--workers", type=int, default=4, help="decoding threads")
    ap.add_argument("--cpu-paths", default="", help="on a CPU, also measure these vision paths whatever the CPU "
                    "has, e.g. int8,bf16 (the automatic one is always measured)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    if args.model == "full":
        model, processor = full_size_random_blip2(tmp / "proc")
        model_path = None
        scorer = ZeroShotScorer(model.to(device, dtype), processor, "full-size-random", args.batch)
    else:
        model_path = str(build_tiny_blip2(tmp / "tiny")) if args.model == "tiny" else args.model
        cpu_fp32 = "fp32" if device.type == "cpu" else None  # measured from fp32; fast paths come after
        scorer = ZeroShotScorer.load(model_path, device=args.device, dtype=args.dtype or cpu_fp32,
                                     batch_size=args.batch, local_files_only=True)
    params = sum(p.numel() for p in scorer.model.parameters())
    print(f"model {args.model}: {params / 1e6:.1f} M parameters on {scorer.device}/{scorer.dtype}, "
          f"{args.images} images, batch {args.batch}, torch threads {torch.get_num_threads()}")
    pngs = load_pngs(args.images)
    w = args.workers
    ours(scorer, pngs[: min(len(pngs), args.batch)], workers=w)  # warm-up
    cache = EmbeddingCache(tmp / "cache", scorer.key)
    fp32_evidence: list[np.ndarray] = []
    t_ours = ours(scorer, pngs, workers=w, evidence=fp32_evidence)
    rows = [("labeler (vision once per image)", t_ours)]
    t_fp32 = t_ours
    if args.compile:
        t = time.perf_counter()
        try:
            scorer.compile_vision()
            ours(scorer, pngs[: min(len(pngs), args.batch)], workers=w)  # compiles
        except Exception as exc:  # noqa: BLE001 - report it and measure the rest eagerly
            print(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); eager from here", flush=True)
            for layer in scorer.model.vision_model.encoder.layers:
                layer._compiled_call_impl = None
        else:
            print(f"compiling the vision layers took {time.perf_counter() - t:.1f} s", flush=True)
            t_comp = ours(scorer, pngs, workers=w)
            rows.append(("labeler, vision layers compiled", t_comp))
            t_ours = min(t_ours, t_comp)
    if args.tier_gb > 0:
        cache.attach_tier(DeviceTier(scorer.device, int(args.tier_gb * 2**30)))
    t_cached = ours(scorer, pngs, cache, workers=w)
    rows.append(("labeler + writing the embedding cache" + (" + GPU tier" if cache.tier else ""), t_cached))
    if not args.skip_baseline:
        baseline(scorer, pngs[: min(len(pngs), args.batch)], args.batch)  # warm-up
        rows.insert(0, ("model forward per image-prompt pair", baseline(scorer, pngs, args.batch)))
    where = "GPU tier" if cache.tier else "cache"
    t_re = rescore_from_cache(scorer, pngs, cache, NEW_PROMPTS)
    t_one = rescore_from_cache(scorer, pngs, cache, ONE_NEW)
    t_same = rescore_from_cache(scorer, pngs, cache, PROMPTS)
    rows += [(f"re-score, both prompts new, from {where}", t_re),
             ("re-score, one of two prompts new", t_one),
             ("re-rank, same prompts (memoised logits)", t_same)]
    if cache.tier is not None:
        cache.attach_tier(None)
        t_disk = rescore_from_cache(scorer, pngs, cache, DISK_PROMPTS)
        rows.append(("re-score, both new, from disk (pinned)", t_disk))
    print(f"\n{'path':<40} {'seconds':>9} {'images/s':>10}")
    for name, t in rows:
        print(f"{name:<40} {t:>9.3f} {len(pngs) / t:>10.1f}")
    if not args.skip_baseline:
        print(f"\nspeed-up of labeler over the pairwise forward: {rows[0][1] / t_ours:.2f}x (2 prompts)")
    print(f"re-scoring from {where} costs {100 * t_re / t_ours:.2f}% of the first pass (both prompts new), "
          f"{100 * t_one / t_ours:.2f}% (one new), {100 * t_same / t_ours:.2f}% (none new)")
    if cache.tier is None and args.tier_gb > 0:
        print(f"re-scoring from disk (pinned staging) costs {100 * t_disk / t_ours:.2f}% of the first pass")
    if scorer.device.type == "cpu" and scorer.precision.path == "fp32":
        t_pairs = None if args.skip_baseline else rows[0][1]
        fast_paths(scorer, pngs, t_pairs, t_fp32, np.concatenate(fp32_evidence), [p for p in args.cpu_paths.split(",") if p], w)
    if args.latency and model_path:
        lat = sorted(predict_latency(tmp / "model_dir", model_path))
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        print(f"\n/predict, 32 cached tasks, {len(lat)} calls over HTTP: median {statistics.median(lat) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
