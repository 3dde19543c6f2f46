"""Where extraction's time goes: decode-only, CNN-only and full extraction on the same files
(scripts/bench_extract.py)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from s2vt.features.backbones.registry import Backbone
from s2vt.features.config import ExtractConfig
from s2vt.features.extract import extract
from s2vt.features.pipeline import Pipeline, worker_chunks
from s2vt.runtime.devices import configure
from s2vt.runtime.devices import name as device_name
from s2vt.runtime.devices import synchronize
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.workers import usable_cores


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding workers), user + system."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def time_stages(items: Sequence[Tuple[str, str]], cfg: ExtractConfig, workdir, backbone: Optional[Backbone] = None) -> dict:
    """Wall times of decode-only (the same workers decoding, sampling and cropping, no CNN),
    CNN-only (the same ``Pipeline`` on ready uint8 images: staging, transfers, CNN) and the
    full extraction into ``workdir/bench.h5``, on the same files; ``ratio`` = extraction /
    max(decode-only, CNN-only).

    Also the CPU seconds each stage used, and ``bound_s`` = max(decode-only, CNN-only,
    (decode CPU + CNN CPU) / cores): when decoding and the CNN both run on the CPU they share
    its cores, so no overlap can finish sooner; ``ratio_to_bound`` = extraction / bound_s."""
    cfg, device = cfg.on_device()
    configure(device, fp32=cfg.precision == "fp32", benchmark=True)
    backbone = (backbone or cfg.network()).to(device)
    t, c = time.perf_counter(), _cpu_seconds()
    images = sum(len(m["images"]) for m in worker_chunks(list(items), cfg, backbone.preprocess) if "images" in m)
    decode_s, decode_cpu = time.perf_counter() - t, _cpu_seconds() - c
    S = backbone.preprocess.size
    chunk = torch.randint(0, 256, (cfg.chunk, cfg.channels(), S, S), dtype=torch.uint8)
    pipe = Pipeline(backbone, device, cfg.cnn_batch(), S, cfg.precision)
    for _ in range(max(2, 2 * cfg.cnn_batch() // cfg.chunk)):  # warm-up: two batches or more
        pipe.add(0, chunk)
    pipe.flush()
    synchronize(device)
    t, c = time.perf_counter(), _cpu_seconds()
    for k in range(0, images, cfg.chunk):
        pipe.add(k, chunk[: min(cfg.chunk, images - k)])
    pipe.flush()
    synchronize(device)
    cnn_s, cnn_cpu = time.perf_counter() - t, _cpu_seconds() - c

    t = time.perf_counter()
    s = extract(items, Path(workdir) / "bench.h5", cfg, backbone=backbone, progress=False)
    extract_s = time.perf_counter() - t
    if s.failed or s.frames != images:
        raise S2VTError(f"benchmark extraction failed: {'; '.join(s.lines() + s.problems())}")
    name = device_name(device)
    cores = usable_cores()
    bound = max(decode_s, cnn_s, (decode_cpu + cnn_cpu) / cores)
    return {"device": name, "stream": cfg.stream, "decode_only_s": round(decode_s, 3), "cnn_only_s": round(cnn_s, 3),
            "extraction_s": round(extract_s, 3), "images": images,
            "ratio": round(extract_s / max(decode_s, cnn_s), 3),
            "decode_cpu_s": round(decode_cpu, 3), "cnn_cpu_s": round(cnn_cpu, 3), "cores": cores,
            "bound_s": round(bound, 3), "ratio_to_bound": round(extract_s / bound, 3)}
