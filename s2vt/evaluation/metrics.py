"""Caption metrics as coco-caption computes them: PTB tokenisation, then BLEU-1..4,
METEOR 1.5, ROUGE-L and CIDEr-D (coco-caption's ``Cider`` is the CIDEr-D variant).

The Java tools are the jars shipped in the ``pycocoevalcap`` package, driven by our own
hardened wrappers: text is sanitised so no newline or ``|||`` can desynchronise the
line protocol, line counts are checked, a JVM that dies or stalls raises with its
stderr instead of hanging, temp files go to the system temp folder (site-packages may
be read-only), and the METEOR process is always closed. On ordinary captions the
numbers equal pycocoevalcap's own to the last digit (tested).

A JVM is bounded twice: it must give a first answer within ``S2VT_JAVA_TIMEOUT`` seconds of
starting (default 60: a JVM that hangs at start is named quickly), then each answer within the
scoring timeout. ``py_tokenize`` is a pure-Python stand-in for the PTB tokenizer, for scoring
without METEOR on a machine without Java.
"""
from __future__ import annotations

import atexit
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

from s2vt.runtime.errors import S2VTError
from s2vt.evaluation.metric_stats import video_stats
from s2vt.runtime.workers import child_dies_with_us

PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
JAVA_TIMEOUT_ENV = "S2VT_JAVA_TIMEOUT"
JAVA_START_TIMEOUT = 60.0  # seconds a JVM may take to give its first answer
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


def java_timeout() -> float:
    """Seconds a Java tool may take from its start to its first answer (``S2VT_JAVA_TIMEOUT``)."""
    raw = os.environ.get(JAVA_TIMEOUT_ENV, "")
    if not raw.strip():
        return JAVA_START_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:
        err = MetricError(f"{JAVA_TIMEOUT_ENV}={raw!r}: give the seconds a JVM may take to start, in (0, 86400]")
        err.exit_code = 2  # the environment must change, as for a bad flag
        raise err
    return value


def _no_answer(what: str, seconds: float) -> MetricError:
    return MetricError(f"{what} gave no answer within {seconds:g}s of starting (the JVM is stuck, or this machine "
                       f"is too busy): set {JAVA_TIMEOUT_ENV}=SECONDS to wait longer")


def _lines_of(text: str) -> str:
    """A tool's stderr on one line."""
    return " / ".join(x.strip() for x in text.strip().splitlines() if x.strip())[-2000:]


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
        stdout = run_java(cmd, "the PTB tokenizer (java, stanford-corenlp)", timeout)
    finally:
        os.unlink(tmp)
    lines = stdout.decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "" and len(lines) == len(todo) + 1:
        lines = lines[:-1]
    if len(lines) != len(todo):
        raise MetricError(f"PTB tokenizer returned {len(lines)} lines for {len(todo)} captions")
    for (i, sentence), line in zip(todo, lines):
        out[i] = _PTB_CACHE[sentence] = " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
    return out


def _pump(stream, sink: list, answered: Optional[threading.Event] = None) -> None:
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        sink.append(chunk)
        if answered is not None:
            answered.set()
    if answered is not None:
        answered.set()  # an exit is an answer too


def _close_pipes(p: subprocess.Popen, pumps: List[threading.Thread]) -> None:
    """Close an exited process's pipes once the threads reading them have drained them (a thread still
    reading after 5 s keeps its pipe: closing it under the read could block)."""
    for t in pumps:
        t.join(timeout=5)
    for stream, t in zip((p.stdout, p.stderr), pumps):
        if stream is not None and not t.is_alive():
            stream.close()


def run_java(cmd: List[str], what: str, timeout: float) -> bytes:
    """Run a Java tool that reads a file and writes to stdout; its output. Bounded twice: its first
    output (or its exit) within :func:`java_timeout`, then the whole run within ``timeout`` seconds."""
    start = java_timeout()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=child_dies_with_us())
    out: List[bytes] = []
    err: List[bytes] = []
    answered = threading.Event()
    pumps = [threading.Thread(target=_pump, args=(p.stdout, out, answered), daemon=True),
             threading.Thread(target=_pump, args=(p.stderr, err), daemon=True)]
    for t in pumps:
        t.start()
    try:
        if not answered.wait(start):
            raise _no_answer(what, start)
        pumps[0].join(timeout)
        if pumps[0].is_alive():
            raise MetricError(f"{what} did not finish within {timeout:g}s")
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        _close_pipes(p, pumps)
    if p.returncode != 0:
        stderr = _lines_of(b"".join(err).decode("utf-8", errors="replace")) or "(no stderr)"
        raise MetricError(f"{what} failed (exit {p.returncode}): {stderr}")
    return b"".join(out)


_PY_CONTRACTION = re.compile(r"(?<=\w)(n't)\b", re.I)
_PY_TOKEN = re.compile(r"n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.,/&]\w+)*|[^\w\s]", re.I)
_PY_DROPPED = PUNCTUATIONS | {'"', "\u201c", "\u201d", "\u2018", "\u2019"}
# brackets become -LRB- ..., which -lowerCase writes in lower case: not in PUNCTUATIONS, so coco-caption keeps them
_PY_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_PY_SPLITS = re.compile(r"\b(can)(not)\b|\b(gon|wan)(na)\b|\b(got)(ta)\b")  # split as the PTB tokenizer splits them


def py_tokenize(sentences: List[str]) -> List[str]:
    """A pure-Python stand-in for :func:`ptb_tokenize` (no Java): lower-cased, clitics split as the
    PTB tokenizer splits them ("it's" -> "it 's", "don't" -> "do n't"), punctuation dropped. Equal on
    ordinary captions; captions with unusual symbols or abbreviations may tokenise differently."""
    out = []
    for s in sentences:
        text = _PY_CONTRACTION.sub(r" \1", one_line(s).lower())
        text = _PY_SPLITS.sub(lambda m: " ".join(g for g in m.groups() if g), text)
        out.append(" ".join(_PY_BRACKETS.get(w, w) for w in _PY_TOKEN.findall(text) if w not in _PY_DROPPED))
    return out


class Meteor:
    """A running METEOR 1.5 process (``-stdio -l en -norm``), as coco-caption runs it.

    Use as a context manager, or call ``close``; one instance can score many times.
    """

    def __init__(self, timeout: float = 300):
        self.timeout = timeout
        self.start_timeout = java_timeout()
        self._answered = False  # the first answer is bounded by start_timeout, the others by timeout
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
        self.broken = False

    def usable(self) -> bool:
        """Whether the process runs and no conversation with it was cut short."""
        return not self.broken and self.proc.poll() is None

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
        wait = self.timeout if self._answered else self.start_timeout
        try:
            line = self._lines.get(timeout=wait)
        except queue.Empty:
            if not self._answered:
                raise _no_answer("METEOR (java -jar meteor-1.5.jar)", wait)
            raise MetricError(f"METEOR gave no answer within {wait:g}s: " + self._err())
        self._answered = True
        if line is None:
            raise MetricError("METEOR process exited: " + self._err())
        return line

    def _err(self) -> str:
        if self.proc.poll() is not None or self._lines.empty():
            self._threads[1].join(timeout=5)  # let the stderr pump catch up with a dead process
        return _lines_of("".join(self._stderr)) or "(no stderr)"

    @staticmethod
    def _clean(s: str) -> str:
        # as coco-caption: drop '|||' and halve double spaces; plus: no line breaks
        return one_line(s).replace("|||", "").replace("  ", " ")

    def compute_score(self, gts: Dict[str, List[str]], res: Dict[str, List[str]]) -> Tuple[float, List[float]]:
        """Corpus METEOR and per-item scores; same arguments as pycocoevalcap's Meteor."""
        return self.compute_stats(gts, res)[:2]

    def compute_stats(self, gts: Dict[str, List[str]],
                      res: Dict[str, List[str]]) -> Tuple[float, List[float], List[str]]:
        """:meth:`compute_score`, and each item's ``SCORE`` statistics line (s2vt.evaluation.metric_stats)."""
        assert gts.keys() == res.keys(), "references and candidates must cover the same ids"
        with self._lock:
            self.broken = True  # until the conversation ends as the protocol says (an error, an interrupt)
            stats = []
            for k in gts:
                assert len(res[k]) == 1, f"{k}: one candidate expected"
                refs = [one_line(r).replace("|||", "") for r in gts[k]]
                self._send(" ||| ".join(("SCORE", " ||| ".join(refs), self._clean(res[k][0]))))
                stats.append(self._read())
            self._send("EVAL ||| " + " ||| ".join(stats))
            scores = [float(self._read()) for _ in stats]
            corpus = float(self._read())
            self.broken = False
            return corpus, scores, stats

    def close(self) -> None:
        """End the process and close its three pipes (once more does nothing)."""
        try:
            self.proc.stdin.close()
        except OSError:  # a dead process: the flush fails, the pipe is closed all the same
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _close_pipes(self.proc, self._threads)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_SHARED: Dict[tuple, Meteor] = {}
_SHARED_LOCK = threading.Lock()


def shared_meteor() -> Meteor:
    """This Python process's METEOR: started on first use and kept until the process ends, so that
    every evaluation in one process (a benchmark's rows, ``evaluate_split`` called in a loop, a
    training run's validations) pays the JVM's start and paraphrase-table load once. A process that
    died or a conversation cut short (an error, an interrupt) is replaced; a different ``java`` or start
    timeout gets its own."""
    key = (java(), java_timeout())
    with _SHARED_LOCK:
        m = _SHARED.get(key)
        if m is None or not m.usable():
            if m is not None:
                m.close()
            m = _SHARED[key] = Meteor()
        return m


def close_shared() -> None:
    """End the shared METEOR processes (at exit; a later ``shared_meteor`` starts a new one)."""
    with _SHARED_LOCK:
        for m in _SHARED.values():
            m.close()
        _SHARED.clear()


atexit.register(close_shared)


def score(references: Dict[str, List[str]], candidates: Dict[str, str], meteor: Optional[Meteor] = None,
          use_meteor: bool = True, java_tokenizer: bool = True,
          stats: Optional[Dict[str, dict]] = None) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
    """Corpus metrics and per-video metrics for ``candidates`` (one caption per id).

    ``references`` and ``candidates`` must have the same ids. Scores are fractions
    (multiply by 100 for the paper's tables). ``java_tokenizer=False`` (only without METEOR):
    :func:`py_tokenize` instead of the PTB tokenizer, so nothing needs Java. ``stats``: a dict
    filled with each video's sufficient statistics (:func:`s2vt.evaluation.metric_stats.video_stats`).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(candidates)
    if set(ids) != set(references):
        raise MetricError("references and candidates cover different video ids")
    flat = [r for k in ids for r in references[k]]
    if use_meteor and not java_tokenizer:
        raise ValueError("METEOR runs on Java: the pure-Python tokenizer is for scoring without it")
    tok = (ptb_tokenize if java_tokenizer else py_tokenize)(flat + [candidates[k] for k in ids])
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
    lines = None
    if use_meteor:
        ms, mss, lines = (meteor or shared_meteor()).compute_stats(gts, res)
        corpus["METEOR"] = ms
        for k, s in zip(ids, mss):
            per[k]["METEOR"] = s
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        s, ss = scorer.compute_score(gts, res)
        corpus[name] = float(s)
        for k, v in zip(ids, ss):
            per[k][name] = float(v)
    if stats is not None:
        stats.update(video_stats(ids, gts, res, lines, per))
    return corpus, per


MAX_CAPTION_WORDS = 1000   # ROUGE-L's table is quadratic in a caption's length
MAX_CAPTION_CHARS = 20_000


def caption_problem(caption: str) -> Optional[str]:
    """Why a caption is too long to score, or None."""
    words = len(caption.split())
    if words > MAX_CAPTION_WORDS or len(caption) > MAX_CAPTION_CHARS:
        return (f"a caption of {words} words and {len(caption)} characters; captions are scored up to "
                f"{MAX_CAPTION_WORDS} words and {MAX_CAPTION_CHARS} characters")
    return None


def read_tsv(path, many: bool, what: str = "") -> Dict[str, List[str]]:
    """``video_id<TAB>caption`` lines -> {id: [captions]} (one per id unless ``many``). ``what``: the
    flag that named the file, for messages; a file that is not a regular UTF-8 file of at most 64 MiB,
    or a caption too long to score, is refused naming the file (and line)."""
    from s2vt.runtime.errors import DataError
    from s2vt.runtime.inputs import read_lines

    out: Dict[str, List[str]] = {}
    where = f"{what} {path}" if what else str(path)
    for n, line in read_lines(path, what, controls=True):  # breaks inside a caption are made spaces
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise DataError(where, f"expected 'video_id<TAB>caption', found {len(cols)} columns", n)
        if caption_problem(cols[1]):
            raise DataError(where, caption_problem(cols[1]), n)
        vid = cols[0].strip()
        if not many and vid in out:
            raise DataError(where, f"second candidate for {vid!r} (one caption per video)", n)
        out.setdefault(vid, []).append(cols[1])
    return out
