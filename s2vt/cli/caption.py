"""The caption command: captions for raw video files, from one checkpoint or an RGB and a flow one
fused."""
from __future__ import annotations

import json

from s2vt.captioning.videos import video_captioner
from s2vt.cli.common import RAW, decode_flags, examples, needs_flow
from s2vt.features.signature import STREAMS
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.console import escaped, say, shown
from s2vt.video.reader import VideoError


def cmd_caption(args) -> int:
    flags = decode_flags(args)
    resolve_device(args.device)
    needs_flow(args, "--alpha", "--weights-flow")
    if args.accept_different_features and not args.cnn:
        raise S2VTError("--accept-different-features goes with --cnn (a backbone standing in for imported features)")
    if args.attention and not args.json:
        raise S2VTError("--attention adds per-word attention weights to the JSON output: add --json")
    cks = [args.checkpoint] + ([args.checkpoint_flow] if args.checkpoint_flow else [])
    cnn_weights = [args.weights] + ([args.weights_flow] if args.checkpoint_flow else [])
    cap = video_captioner(cks, cnn_weights, device=args.device, streams=list(STREAMS) if args.checkpoint_flow else None,
                          download=args.download, flow_weights=args.flow_weights, cnn=args.cnn, layer=args.layer,
                          accept_different=args.accept_different_features)
    if args.attention and not any(hasattr(m, "attention") for m in cap.models):  # before any video is decoded
        raise S2VTError(f"--attention: {', '.join(cks)} {'has' if len(cks) == 1 else 'have'} no attention "
                        "(trained with --decoder s2vt); leave --attention out")
    dec = cap.decoding.given(**flags)  # its alpha weighs a flow model (fusion_weights)
    rc = 0
    for v in args.videos:
        try:
            text = cap.caption([v], decoding=dec)[v]
            rec = {"video": v, "caption": text}
            if args.attention:
                att = cap.attention(v, text)
                rec["attention"] = att[0] if len(att) == 1 else dict(zip(STREAMS, att))
            print(json.dumps(rec) if args.json else f"{shown(v)}\t{escaped(text)}", flush=True)
        except (VideoError, S2VTError) as e:
            rc = 1
            print(json.dumps({"video": v, "error": str(e)}) if args.json else f"{shown(v)}\terror: {escaped(str(e))}",
                  flush=True)
            say(f"s2vt caption: {shown(v)}: {e}")
    return rc


def add_caption(sub, shared):
    s = sub.add_parser("caption", help="caption raw video files", formatter_class=RAW, parents=[shared["device"], shared["decode"]],
                       epilog=examples("s2vt caption video.mp4 --checkpoint runs/rgb/best.pt",
                                        "s2vt caption a.mp4 b.avi --checkpoint runs/rgb/best.pt --checkpoint-flow runs/flow/best.pt --alpha 0.6 --json"))
    s.add_argument("videos", nargs="+", help="video files")
    s.add_argument("--checkpoint", required=True, help="a trained model (best.pt)")
    s.add_argument("--checkpoint-flow", help="a flow model to fuse with")
    s.add_argument("--weights", help="CNN weights for the RGB model's backbone, if not the offline default")
    s.add_argument("--weights-flow", help="CNN weights for the flow model's backbone")
    s.add_argument("--cnn", help="for a model trained on imported features (s2vt import-features): a backbone "
                                 "that computes the same features (its width must be the recorded one), e.g. "
                                 "resnet152 or timm:MODEL, with extract's defaults (one frame in 10, the backbone's "
                                 "preprocessing); needs --accept-different-features")
    s.add_argument("--layer", help="with --cnn: the feature layer")
    s.add_argument("--accept-different-features", action="store_true",
                   help="with --cnn: caption although the backbone's features may differ from the imported ones "
                        "(their signature records no backbone, sampling or preprocessing); without it, --cnn is "
                        "refused with one line saying what it would compute")
    s.add_argument("--flow-weights", help="RAFT weights of a model trained on --flow-method raft_* features, if not "
                                          "torchvision's file in torch's cache")
    s.add_argument("--download", action="store_true",
                   help="let torchvision / timm fetch published weights missing from this machine (needs internet)")
    s.add_argument("--attention", action="store_true",
                   help="with --json: each word's attention weights over the encoded frames (--decoder attention)")
    s.add_argument("--json", action="store_true", help="one JSON object per video")
    s.set_defaults(fn=cmd_caption)
