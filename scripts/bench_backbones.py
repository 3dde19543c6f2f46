#!/usr/bin/env python
"""What each backbone costs: images/s of the extraction's own Pipeline (staging, normalisation,
network) per backbone, and the ratio to the default EfficientNet-Lite0, timed in the same
process on the same random uint8 images after a warm-up.

The timm models and RAFT run with randomly initialised weights written to a temporary file
(the cost does not depend on the weights), so nothing is downloaded. RAFT's rows are frame
pairs/s of flow images + Lite0 features (--flow-method raft_small / raft_large); OpenCV's
DIS runs in the decoding workers instead and is not timed here (scripts/bench_extract.py).

  python scripts/bench_backbones.py                                 # CPU, the default list
  python scripts/bench_backbones.py --models timm:resnet50 --images 64 --json
  python scripts/bench_backbones.py --device cuda --batch-size 64 --images 2048 --json
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

DEFAULT = ["efficientnet_lite0", "timm:resnet18", "timm:resnet50", "timm:convnext_tiny",
           "timm:vit_base_patch32_clip_224.openai", "timm:vit_base_patch16_clip_224.openai", "raft_small"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT,
                   help="--cnn names, or raft_small / raft_large for learned flow (Lite0 behind it)")
    p.add_argument("--images", type=int, default=32, help="images (or pairs) per timing")
    p.add_argument("--batch-size", type=int, default=8, help="images per network call (the CPU default: 8)")
    p.add_argument("--repeats", type=int, default=2, help="timings per model (the best is kept)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    args = p.parse_args(argv)
    if min(args.images, args.batch_size, args.repeats) < 1:
        p.error("--images, --batch-size and --repeats must be at least 1")
    return args


def _random_weights(model: str, folder: Path) -> str:
    import torch

    if model in ("raft_small", "raft_large"):
        from torchvision.models import optical_flow

        net = getattr(optical_flow, model)(weights=None)
    else:
        import timm

        net = timm.create_model(model[len("timm:"):], pretrained=False)
    path = folder / f"{model.replace(':', '_')}.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def network(model: str, folder: Path, device):
    from s2vt.features.config import ExtractConfig

    if model in ("raft_small", "raft_large"):
        cfg = ExtractConfig(stream="flow", flow_method=model, flow_weights=_random_weights(model, folder),
                            device=str(device))
    else:
        cfg = ExtractConfig(cnn=model, weights=None if not model.startswith("timm:") else
                            _random_weights(model, folder), device=str(device))
    return cfg, cfg.network().to(device)


def rate(model: str, args, folder: Path, device) -> dict:
    import torch

    from s2vt.runtime.devices import synchronize
    from s2vt.features.pipeline import Pipeline

    cfg, net = network(model, folder, device)
    S = cfg.preprocess().size
    chunk = torch.randint(0, 256, (args.batch_size, cfg.channels(), S, S), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    best = 0.0
    for _ in range(args.repeats):
        pipe = Pipeline(net, device, args.batch_size, S)
        pipe.add(0, chunk)  # warm-up
        pipe.flush()
        synchronize(device)
        t = time.perf_counter()
        for k in range(0, args.images, args.batch_size):
            pipe.add(k, chunk[: min(args.batch_size, args.images - k)])
        pipe.flush()
        synchronize(device)
        best = max(best, args.images / (time.perf_counter() - t))
    return {"images_per_s": round(best, 2), "dim": net.dim, "input_size": S}


def main(args):
    import torch

    from s2vt.runtime.devices import configure, resolve

    device = resolve(args.device)
    configure(device, fp32=True, benchmark=True)  # as s2vt extract: IEEE fp32, cuDNN's fastest algorithms
    models = args.models if args.models[0] == "efficientnet_lite0" else ["efficientnet_lite0", *args.models]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            out[m] = rate(m, args, Path(tmp), device)
    base = out["efficientnet_lite0"]["images_per_s"]
    where = f"{args.device} ({torch.get_num_threads()} threads)" if args.device == "cpu" else args.device
    print(f"{where}, batch {args.batch_size}, {args.images} images per timing, best of {args.repeats}")
    print(f"{'model':42s} {'dim':>5s} {'size':>5s} {'images/s':>9s}  vs Lite0")
    for m, r in out.items():
        print(f"{m:42s} {r['dim']:5d} {r['input_size']:5d} {r['images_per_s']:9.2f}  {r['images_per_s'] / base:.3f}x")
    result = {"device": where, "batch_size": args.batch_size, "images": args.images,
              "images_per_s": {m: r["images_per_s"] for m, r in out.items()},
              "ratio_to_lite0": {m: round(r["images_per_s"] / base, 4) for m, r in out.items()},
              "dim": {m: r["dim"] for m, r in out.items()}}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(parse_args())
