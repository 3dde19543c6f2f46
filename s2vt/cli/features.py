"""Commands on features: extract (videos -> store), merge-features (shards -> store), import-features
and export-features (per-video arrays in and out)."""
from __future__ import annotations

import os
from pathlib import Path

from s2vt.cli.common import DATASETS, RAW, examples
from s2vt.data.corpora import SPLITS, load_corpus
from s2vt.data.ids import check_video_id
from s2vt.features import interop
from s2vt.features.config import ExtractConfig
from s2vt.features.extract import extract, unique_items, video_items
from s2vt.features.shards import env_shard, parse_shard, shard_items, shard_path
from s2vt.features.store import merge_stores
from s2vt.runtime.config import add_arguments, overrides
from s2vt.runtime.errors import S2VTError
from s2vt.runtime.inputs import kind_problem, read_lines
from s2vt.runtime.console import print_summary, shown


def list_items(path: str):
    items = []
    # a regular UTF-8 file (a byte-order mark is not a path); a line with a control character is refused
    for n, line in read_lines(path, "--list"):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) > 2:
            raise S2VTError(f"{path}:{n}: expected 'path' or 'id<TAB>path', found {len(cols)} columns")
        p = Path(cols[-1].strip())
        items.append((check_video_id(cols[0].strip() if len(cols) == 2 else p.stem, f"{path}:{n}"), p))
    return items


def extract_items(args):
    items = []
    if args.dataset and not args.root:
        raise S2VTError("--dataset needs --root (the dataset folder)")
    for given, flag in ((args.root, "--root"), (args.splits, "--splits")):
        if given and not args.dataset:
            raise S2VTError(f"{flag} applies only with --dataset NAME (the videos of a dataset's splits)")
    if args.dataset:
        corpus = load_corpus(args.dataset, args.root)
        for s in args.splits or SPLITS:
            items += [(v, corpus.video_path(v)) for v, _ in corpus.split_items(s)]
    if args.list:
        items += list_items(args.list)
    return unique_items(items + video_items(args.videos))


def extract_config(args):
    """The ExtractConfig of parsed ``s2vt extract`` arguments."""
    if args.num_frames and args.stride is not None:
        raise S2VTError("--stride does not apply with --num-frames (K frames spread uniformly); give one of them")
    return ExtractConfig(**{**overrides(args, ExtractConfig), "device": args.device})


def cmd_extract(args) -> int:
    cfg = extract_config(args)
    items = extract_items(args)
    if not items:
        raise S2VTError("no videos given: pass folders/files, --list FILE or --dataset NAME --root DIR")
    shard = parse_shard(args.shard) if args.shard else env_shard()
    out = Path(args.out)
    if shard and shard[1] > 1:
        items = shard_items(items, *shard)
        out = shard_path(args.out, *shard)
    if any(Path(p).exists() and out.exists() and Path(p).resolve() == out.resolve() for _, p in items):
        raise S2VTError(f"--out {out} is one of the videos to extract")
    return print_summary(extract(items, out, cfg, progress=not args.quiet, shard=shard), "extract")


def cmd_merge(args) -> int:
    if any(Path(i).exists() and Path(args.out).exists() and Path(i).resolve() == Path(args.out).resolve() for i in args.inputs):
        raise S2VTError(f"{args.out} is also an input; merge into a new file")
    if Path(args.out).exists() and not Path(args.out).is_file():
        raise S2VTError(f"{args.out} is {kind_problem(os.stat(args.out).st_mode)}; give the merged HDF5 file's path")
    if Path(args.out).exists() and not args.overwrite:
        raise S2VTError(f"{args.out} exists; pass --overwrite to replace it, or choose another output")
    out = merge_stores(args.out, args.inputs)
    print(f"merged {len(args.inputs)} stores into {shown(str(out))}")
    return 0


def add_extract(sub, shared):
    s = sub.add_parser("extract", help="cache CNN features of RGB frames or optical-flow images in HDF5",
                       formatter_class=RAW, parents=[shared["device"]], description=(
                           "Samples frames (one in every --stride, or --num-frames uniformly), runs a CNN and "
                           "writes (T, D) features per video to --out. Re-running skips finished videos; a killed "
                           "run resumes. Videos that cannot be decoded are reported and recorded in the store. "
                           "A video shorter than the stride gives one step (its first frame); for flow, the last "
                           "sampled frame is paired with its predecessor.\n"
                           "Exit status: 0 all extracted, 1 some videos failed (the rest are in the store) or an "
                           "output could not be written, 2 usage or setup error."),
                       epilog=examples("s2vt extract data/synthetic/videos --stream rgb --out features/rgb.h5",
                                        "s2vt extract --dataset msvd --root data/msvd --splits test --stream flow --out features/msvd_flow.h5",
                                        "s2vt extract clips/ --cnn vgg16 --weights ~/weights/vgg16-397923af.pth --out features/vgg.h5",
                                        "s2vt extract clips/ --cnn timm:vit_base_patch32_clip_quickgelu_224.openai --weights clip_b32.safetensors --out features/clip.h5",
                                        "s2vt extract clips/ --stream flow --flow-method raft_small --flow-weights raft_small.pth --device cuda --out features/raft.h5",
                                        "torchrun --nproc_per_node 4 -m s2vt extract clips/ --out f.h5 --device cuda   # then: s2vt merge-features f.h5 f.shard*of4.h5"))
    s.add_argument("videos", nargs="*", help="video files or folders (searched recursively)")
    s.add_argument("--out", required=True, help="HDF5 feature file (created, or resumed when it exists)")
    s.add_argument("--list", help="text file of video paths (or 'id<TAB>path' lines; blank lines and # comments skipped)")
    s.add_argument("--dataset", help=f"take videos from a dataset ({DATASETS})")
    s.add_argument("--root", help="dataset root for --dataset")
    s.add_argument("--splits", nargs="+", help="splits of --dataset to extract (default: " + " ".join(SPLITS) + ")")
    add_arguments(s, ExtractConfig)
    s.add_argument("--shard", help="I/N: process every N-th video from the I-th, writing OUT.shardIofN.h5 "
                                   "(set automatically under torchrun)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("merge-features", help="join shard stores into one", formatter_class=RAW, parents=[shared["overwrite"]],
                       epilog=examples("s2vt merge-features features/all.h5 features/all.shard*of4.h5"))
    s.add_argument("out", help="the merged HDF5 file to write")
    s.add_argument("inputs", nargs="+", help="shard stores written by `s2vt extract --shard`")
    s.set_defaults(fn=cmd_merge)


def add_interop(sub, shared):
    """import-features / export-features: per-video arrays made elsewhere, in and out (s2vt/interop.py)."""
    def cmd_import(args) -> int:
        summary = interop.import_features(args.src, args.out, args.name, args.stream, args.id_map, args.overwrite)
        return print_summary(summary, "import-features")

    def cmd_export(args) -> int:
        print(f"exported {interop.export_features(args.store, args.out, args.overwrite)} videos -> {shown(args.out)}")
        return 0

    s = sub.add_parser("import-features", help="make a feature store of per-video .npy/.npz arrays or an HDF5 file",
                       formatter_class=RAW, parents=[shared["overwrite"]], description=(
                           "Ids from file names: vid1.npy -> vid1, -4wsuPCjDBc_5_15.avi.npy -> -4wsuPCjDBc_5_15 "
                           "(see features/README.md). Headers are checked before data is read; each array must be "
                           "2-D (frames, D), non-empty, finite, float, with one D for all; a bad one is named and "
                           "skipped (exit 1); when none can be imported nothing is written (exit 2). Re-running "
                           "resumes; --overwrite replaces --out only once the new store is complete."),
                       epilog=examples("s2vt import-features msvd_resnet_npy/ --out features/msvd_imported.h5 --name resnet152-npy "
                                        "--id-map data/msvd/youtube_mapping.txt"))
    s.add_argument("src", help="folder of ID.npy / ID.npz files, or an HDF5 file of one (T, D) dataset per video")
    s.add_argument("--out", required=True, help="HDF5 feature store to write (resumed when it exists)")
    s.add_argument("--name", required=True, help="what the features are (recorded as backbone 'imported:NAME')")
    s.add_argument("--stream", choices=["rgb", "flow"], default="rgb", help="the stream they stand for")
    s.add_argument("--id-map", help="text file of 'FILE_ID VIDEO_ID' lines renaming file ids (e.g. MSVD's youtube_mapping.txt)")
    s.set_defaults(fn=cmd_import)
    s = sub.add_parser("export-features", help="write a feature store as one .npy per video", formatter_class=RAW,
                       parents=[shared["overwrite"]], description=(
                           f"Writes ID.npy per video and a manifest ({interop.MANIFEST}) listing them. A folder "
                           "holding files it did not write, or another store's export, is refused; --overwrite "
                           "replaces files of the names it writes and removes only those the earlier manifest lists."),
                       epilog=examples("s2vt export-features features/rgb.h5 --out rgb_npy/"))
    s.add_argument("store", help="an s2vt feature store")
    s.add_argument("--out", required=True, help="folder to write ID.npy files into (new, empty, or an export of this store)")
    s.set_defaults(fn=cmd_export)
