"""A self-contained HTML page of an evaluation: per video a keyframe strip, the generated
caption, the references and per-video METEOR; sorted worst first, re-sortable by
clicking a header. All text is escaped; images are inlined as base64 JPEG. Also the
training curves (``curves.png``) drawn from a run's ``metrics.jsonl``.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

import cv2

from s2vt.runtime.errors import S2VTError
from s2vt.runtime.fileio import atomic_write
from s2vt.data.ids import id_problem
from s2vt.runtime.inputs import NotText, check_input_file, read_json
from s2vt.video.reader import Sampling, VideoError, iter_frames


def keyframes(path, n: int = 4, height: int = 72) -> list:
    """Up to ``n`` evenly spaced frames of a video as base64 JPEG strings."""
    out = []
    try:
        for _, frame in iter_frames(path, Sampling(num_frames=n)):
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                out.append(base64.b64encode(buf.tobytes()).decode())
    except VideoError:
        pass
    return out


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}
td.strip img{height:72px;margin-right:2px}
.gen{font-weight:600}.base{color:#a33}.refs{color:#555;font-size:90%}.score{font-variant-numeric:tabular-nums}
"""
_SCRIPT = """
document.querySelectorAll('th[data-k]').forEach(function(th){th.addEventListener('click',function(){
 var k=th.dataset.k,tb=document.querySelector('tbody'),rows=Array.from(tb.rows);
 var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
 rows.sort(function(a,b){var x=a.dataset[k],y=b.dataset[k];
   var nx=parseFloat(x),ny=parseFloat(y);if(!isNaN(nx)&&!isNaN(ny)){x=nx;y=ny;}
   return (x<y?-1:x>y?1:0)*(asc?1:-1);});
 rows.forEach(function(r){tb.appendChild(r);});});});
"""


def render(evaluation: dict, video_path: Optional[Callable[[str], Path]] = None, title: str = "s2vt evaluation",
           frames: int = 4, against: Optional[dict] = None) -> str:
    """HTML for an evaluation dict (as written by ``s2vt evaluate``); with ``against`` (a baseline's
    evaluation of the same videos), each video shows both captions and the differences, the videos
    that differ most first: the ones that drive the difference of the corpus scores."""
    e = html.escape
    videos = evaluation["videos"]
    score = lambda v, k: videos[v].get(k, 0.0) - (against["videos"][v].get(k, 0.0) if against else 0.0)
    if against:
        order = sorted(videos, key=lambda v: (-abs(score(v, "METEOR")), v))
    else:
        order = sorted(videos, key=lambda v: videos[v].get("METEOR", 0.0))  # worst first
    rows = []
    for vid in order:
        r = videos[vid]
        strip = "".join(f'<img alt="frame" src="data:image/jpeg;base64,{b}">' for b in _keyframes_of(vid, video_path, frames))
        refs = "<br>".join(e(x) for x in r.get("references", []))
        gen = f'<div class="gen">{e(r.get("caption", ""))}</div>'
        if against:
            gen += f'<div class="base">baseline: {e(against["videos"][vid].get("caption", ""))}</div>'
        m, c = score(vid, "METEOR"), score(vid, "CIDEr")
        shown = "{:+.1f}" if against else "{:.1f}"  # a difference carries its sign
        rows.append(f'<tr data-vid="{e(vid, quote=True)}" data-meteor="{m:.6f}" data-cider="{c:.6f}">'
                    f'<td>{e(vid)}</td><td class="strip">{strip}</td><td>{gen}<div class="refs">{refs}</div></td>'
                    f'<td class="score">{shown.format(100 * m)}</td><td class="score">{shown.format(100 * c)}</td></tr>')
    return _page(evaluation, title, rows, against)


def _page(evaluation: dict, title: str, rows: list, against: Optional[dict]) -> str:
    e = html.escape
    summary = ", ".join(f"{e(k)} {100 * v:.1f}" for k, v in evaluation.get("metrics", {}).items())
    if against:
        base = ", ".join(f"{e(k)} {100 * v:.1f}" for k, v in against.get("metrics", {}).items())
        summary += f"; baseline ({e(describe(against))}): {base}"
    sort = ("Sorted by the size of each video's METEOR difference from the baseline, largest first"
            if against else "Sorted from worst to best METEOR")
    heads = ("&Delta; METEOR", "&Delta; CIDEr") if against else ("METEOR", "CIDEr")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='generator' content='s2vt-report'><title>{e(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{e(title)}</h1><p class='setup'>{e(describe(evaluation))}</p>"
            f"<p>{len(rows)} videos. Corpus (x100): {summary}</p>"
            f"<p>{sort}; click a header to re-sort.</p>"
            "<table><thead><tr><th data-k='vid'>video</th><th>keyframes</th><th>generated / references</th>"
            f"<th data-k='meteor'>{heads[0]}</th><th data-k='cider'>{heads[1]}</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><script>{_SCRIPT}</script></body></html>")


def describe(ev: dict) -> str:
    """One line of what made an evaluation: checkpoint(s), dataset and split, decoding, alpha, date."""
    dec = ev.get("decoding") if isinstance(ev.get("decoding"), dict) else {"beam": ev.get("beam")}
    cks = ev.get("checkpoints") if isinstance(ev.get("checkpoints"), list) else []
    parts = [("checkpoints " if len(cks) > 1 else "checkpoint ") + " + ".join(map(str, cks)) if cks else "",
             f"{ev['dataset']} {ev.get('split', '')}".strip() if ev.get("dataset") else "",
             f"beam {dec.get('beam')}" if dec.get("beam") is not None else "",
             f"length penalty {dec['len_penalty']}" if dec.get("len_penalty") is not None else "",
             f"at most {dec['max_len']} words" if dec.get("max_len") is not None else "",
             f"alpha {ev['alpha']}" + (" (tuned on val)" if ev.get("alpha_tuning") else "")
             if ev.get("alpha") is not None else "",
             f"evaluated {ev['date']}" if ev.get("date") else ""]
    return "; ".join(p for p in parts if p)


def store_sources(evaluation: dict) -> Optional[Callable[[str], Path]]:
    """Video files by id from the source paths the evaluation's first feature store recorded at
    extraction (None when it names no readable store)."""
    from s2vt.features.store import FeatureStore

    stores = evaluation.get("features")
    if not isinstance(stores, list) or not stores or not isinstance(stores[0], str):
        return None
    try:
        check_input_file(stores[0], max_bytes=None)  # a FIFO named here would block the HDF5 library
        store = FeatureStore(stores[0])
    except (S2VTError, OSError):
        return None

    def path_of(vid: str) -> Path:
        if vid not in store:
            raise S2VTError(f"{vid} is not in {stores[0]}")
        return Path(str(store.meta(vid).get("source", "")))

    return path_of


def _keyframes_of(vid: str, video_path, frames: int) -> list:
    """Keyframes of a video by id; none when the id is not a valid one (paths stay inside the dataset)."""
    if video_path is None or id_problem(vid):
        return []
    try:
        path = video_path(vid)
        if not os.path.isfile(path):  # a FIFO or device would block the decoder
            return []
        return keyframes(path, frames)
    except (S2VTError, OSError, ValueError):
        return []


def is_score(v) -> bool:
    """A finite number a page can show (not a bool, not an integer too large for a float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and abs(v) <= 1e6
    except OverflowError:
        return False


def _short(key) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:50] + "..."


def check_evaluation(ev, where) -> None:
    """Refuse an evaluation whose shape ``render`` cannot show (names the first bad field)."""
    what = f"{where} is not an evaluation written by `s2vt evaluate`"
    if not isinstance(ev, dict) or not isinstance(ev.get("videos"), dict):
        raise S2VTError(f"{what} (no 'videos' object)")
    metrics = ev.get("metrics", {})
    if not isinstance(metrics, dict) or not all(is_score(v) for v in metrics.values()):
        bad = next((k for k, v in metrics.items() if not is_score(v)), None) if isinstance(metrics, dict) else None
        raise S2VTError(f"{what} ('metrics' must map names to finite numbers"
                        + (f"; metrics[{_short(bad)}] is not one)" if bad is not None else ")"))
    for vid, r in ev["videos"].items():
        ok = isinstance(r, dict) and isinstance(r.get("caption", ""), str) and isinstance(r.get("references", []), list)
        if not ok or not all(is_score(r.get(k, 0.0)) for k in ("METEOR", "CIDEr")):
            raise S2VTError(f"{what} (videos[{_short(vid)}] must be an object with a caption string, a references "
                            "list and finite scores)")
        if not all(isinstance(x, str) for x in r.get("references", [])):
            raise S2VTError(f"{what} (videos[{_short(vid)}].references must be a list of strings)")


def read_evaluation(path) -> dict:
    """An evaluation JSON, checked for what :func:`render` shows."""
    try:  # a regular UTF-8 file of at most 64 MiB, nested at most 64 levels (s2vt.runtime.inputs)
        ev = read_json(path, "evaluation")
    except NotText as e:
        raise S2VTError(f"{path} is not an evaluation JSON written by `s2vt evaluate` ({e})")
    check_evaluation(ev, path)
    return ev


def write_report(evaluation_json, out_html, video_path: Optional[Callable[[str], Path]] = None,
                 title: str = "s2vt evaluation", against_json=None) -> Path:
    """The HTML page of ``evaluation_json``; with ``against_json``, against that baseline's evaluation."""
    ev = read_evaluation(evaluation_json)
    base = read_evaluation(against_json) if against_json else None
    if base is not None and set(base["videos"]) != set(ev["videos"]):
        raise S2VTError(f"--against {against_json} captions other videos than {evaluation_json} "
                        f"({len(set(base['videos']) ^ set(ev['videos']))} differ); evaluate both on the same split")
    if base is not None and title == "s2vt evaluation":
        title = "s2vt evaluation against a baseline"
    return atomic_write(Path(out_html), render(ev, video_path or store_sources(ev), title, against=base))


def plot_curves(metrics_path: Path, png: Path, best_epoch: Optional[int] = None) -> None:
    """Training loss, validation loss and val METEOR against epochs (fractional for the training
    lines), from ``metrics.jsonl``; ``best_epoch``: the epoch best.pt holds, marked on both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(metrics_path)] if Path(metrics_path).exists() else []
    tr = [(r.get("epochs", r["epoch"]), r["train_loss"]) for r in recs if "train_loss" in r]
    va = [(r["epoch"], r["val_loss"]) for r in recs if "val_loss" in r]
    me = [(r["epoch"], 100 * r["val_meteor"]) for r in recs if "val_meteor" in r]
    beams = {r.get("val_beam", 1) for r in recs if "val_meteor" in r}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if tr:
        axes[0].plot(*zip(*tr), label="train")
    if va:
        axes[0].plot(*zip(*va), "o-", label="val")
    axes[0].set(xlabel="epoch", ylabel="loss (per token)", title="loss")
    if me:
        axes[1].plot(*zip(*me), "o-")
    decoded = "greedy" if beams == {1} else f"beam {', '.join(map(str, sorted(beams)))}"
    axes[1].set(xlabel="epoch", ylabel="METEOR (x100)", title=f"val METEOR ({decoded})")
    if best_epoch is not None and best_epoch >= 0:
        for ax in axes:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best.pt (epoch {best_epoch})")
        axes[1].legend()
    if tr or va:
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
