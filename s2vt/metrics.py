"""Caption metrics as coco-caption computes them: PTB tokenisation, then BLEU-1..4,
METEOR 1.5, ROUGE-L and CIDEr-D (coco-caption's ``Cider`` is the CIDEr-D variant).

The Java tools are the jars shipped in the ``pycocoevalcap`` package, driven by our own
hardened wrappers: text is sanitised so no newline or ``|||`` can desynchronise the
line protocol, line counts are checked, a JVM that dies or stalls raises with its
stderr instead of hanging, temp files go to the system temp folder (site-packages may
be read-only), and the METEOR process is always closed. On ordinary captions the
numbers equal pycocoevalcap's own to the last digit (tested).
"""
from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import S2VTError
from .workers import child_dies_with_us

PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
# characters that Java or the line protocols may take as line breaks
_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class MetricError(S2VTError):
    """The scorers (Java METEOR, PTB tokenizer) failed while running (exit status 1)."""

    exit_code = 1


def _pkg_dir() -> Path:
    try:
        import pycocoevalcap
    except ImportError:
        raise MetricError("pycocoevalcap is not installed: pip install pycocoevalcap")
    return Path(list(pycocoevalcap.__path__)[0])  # a namespace package: no __file__


def java() -> str:
    exe = shutil.which("java")
    if not exe:
        raise MetricError("no Java runtime found (METEOR and the PTB tokenizer need one): "
                          "install it, e.g. `apt-get install default-jre-headless`")
    return exe


def one_line(text: str) -> str:
    """Collapse every kind of line break to a space."""
    return _BREAKS.sub(" ", text)


_PTB_CACHE: Dict[str, str] = {}  # line -> its tokens: the tokenizer treats each line on its own
_PTB_CACHE_MAX = 500_000


def ptb_tokenize(sentences: List[str], timeout: float = 600) -> List[str]:
    """Stanford PTB tokenisation (lower-cased, punctuation dropped), one output per input.

    Lines seen before in this process come from a cache, so that scoring the same references
    again (every validation, every alpha of the fusion tuning) starts no JVM for them."""
    out = [""] * len(sentences)
    todo = []
    for i, s in enumerate(sentences):
        line = one_line(s)
        if line in _PTB_CACHE:
            out[i] = _PTB_CACHE[line]
        elif line.strip():
            todo.append((i, line))
    if not todo:
        return out
    if len(_PTB_CACHE) > _PTB_CACHE_MAX:
        _PTB_CACHE.clear()
    jar = _pkg_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    fd, tmp = tempfile.mkstemp(prefix="s2vt-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write("\n".join(s for _, s in todo).encode("utf-8"))
        cmd = [java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "utf-8", tmp]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MetricError(f"PTB tokenizer did not finish within {timeout}s")
        if p.returncode != 0:
            raise MetricError(f"PTB tokenizer failed (exit {p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    finally:
        os.unlink(tmp)
    lines = p.stdout.decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "" and len(lines) == len(todo) + 1:
        lines = lines[:-1]
    if len(lines) != len(todo):
        raise MetricError(f"PTB tokenizer returned {len(lines)} lines for {len(todo)} captions")
    for (i, sentence), line in zip(todo, lines):
        out[i] = _PTB_CACHE[sentence] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    return out


class Meteor:
    """A running METEOR 1.5 process (``-stdio -l en -norm``), as coco-caption runs it.

    Use as a context manager, or call ``close``; one instance can score many times.
    """

    def __init__(self, timeout: float = 300):
        self.timeout = timeout
        jar_dir = _pkg_dir() / "meteor"
        cmd = [java(), "-Dfile.encoding=UTF-8", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
        self.proc = subprocess.Popen(cmd, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=child_dies_with_us())
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stderr: List[str] = []
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._pump_out, self._pump_err)]
        for t in self._threads:
            t.start()
        self._lock = threading.Lock()

    def _pump_out(self):
        for raw in self.proc.stdout:
            self._lines.put(raw.decode("utf-8", errors="replace").strip())
        self._lines.put(None)

    def _pump_err(self):
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode("utf-8", errors="replace"))
            del self._stderr[:-50]

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write((line + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise MetricError("METEOR process died: " + self._err())

    def _read(self) -> str:
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            raise MetricError(f"METEOR gave no answer within {self.timeout}s: " + self._err())
        if line is None:
            raise MetricError("METEOR process exited: " + self._err())
        return line

    def _err(self) -> str:
        if self.proc.poll() is not None or self._lines.empty():
            self._threads[1].join(timeout=5)  # let the stderr pump catch up with a dead process
        return ("".join(self._stderr).strip()[-2000:]) or "(no stderr)"

    @staticmethod
    def _clean(s: str) -> str:
        # as coco-caption: drop '|||' and halve double spaces; plus: no line breaks
        return one_line(s).replace("|||", "").replace("  ", " ")

    def compute_score(self, gts: Dict[str, List[str]], res: Dict[str, List[str]]) -> Tuple[float, List[float]]:
        """Corpus METEOR and per-item scores; same arguments as pycocoevalcap's Meteor."""
        assert gts.keys() == res.keys(), "references and candidates must cover the same ids"
        with self._lock:
            stats = []
            for k in gts:
                assert len(res[k]) == 1, f"{k}: one candidate expected"
                refs = [one_line(r).replace("|||", "") for r in gts[k]]
                self._send(" ||| ".join(("SCORE", " ||| ".join(refs), self._clean(res[k][0]))))
                stats.append(self._read())
            self._send("EVAL ||| " + " ||| ".join(stats))
            scores = [float(self._read()) for _ in stats]
            return float(self._read()), scores

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def score(references: Dict[str, List[str]], candidates: Dict[str, str], meteor: Optional[Meteor] = None,
          use_meteor: bool = True) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
    """Corpus metrics and per-video metrics for ``candidates`` (one caption per id).

    ``references`` and ``candidates`` must have the same ids. Scores are fractions
    (multiply by 100 for the paper's tables).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(candidates)
    if set(ids) != set(references):
        raise MetricError("references and candidates cover different video ids")
    flat = [r for k in ids for r in references[k]]
    tok = ptb_tokenize(flat + [candidates[k] for k in ids])
    gts, res, pos = {}, {}, 0
    for k in ids:
        n = len(references[k])
        gts[k] = [r for r in tok[pos:pos + n] if r] or [""]
        pos += n
    for k, c in zip(ids, tok[len(flat):]):
        res[k] = [c]
    for k in ids:
        if gts[k] == [""]:
            raise MetricError(f"video {k} has no non-empty reference caption")
    corpus: Dict[str, float] = {}
    per: Dict[str, Dict[str, float]] = {k: {} for k in ids}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints; keep stdout clean
        b, bs = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"Bleu_{n + 1}"] = float(b[n])
        for k, s in zip(ids, bs[n]):
            per[k][f"Bleu_{n + 1}"] = float(s)
    if use_meteor:
        own = meteor is None
        m = meteor or Meteor()
        try:
            ms, mss = m.compute_score(gts, res)
        finally:
            if own:
                m.close()
        corpus["METEOR"] = ms
        for k, s in zip(ids, mss):
            per[k]["METEOR"] = s
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        s, ss = scorer.compute_score(gts, res)
        corpus[name] = float(s)
        for k, v in zip(ids, ss):
            per[k][name] = float(v)
    return corpus, per


def read_tsv(path, many: bool) -> Dict[str, List[str]]:
    """``video_id<TAB>caption`` lines -> {id: [captions]} (one per id unless ``many``)."""
    from .datasets import read_lines
    from .errors import DataError

    out: Dict[str, List[str]] = {}
    for n, line in read_lines(Path(path)):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(path, f"expected 'video_id<TAB>caption', found {len(cols)} columns", n)
        vid = cols[0].strip()
        if not many and vid in out:
            raise DataError(path, f"second candidate for {vid!r} (one caption per video)", n)
        out.setdefault(vid, []).append(cols[1])
    return out
