"""Paired significance from evaluation JSONs: exact corpus scores per resample, fixed seeds,
one-line refusals."""
import json

import numpy as np
import pytest

from s2vt.cli import main
from s2vt.evaluation.compare import (METRICS, System, _seed_picks, _video_counts, bootstrap, compare, load_systems,
                          p_bootstrap, randomisation)
from s2vt.evaluation.metric_stats import bleu_from_stats, meteor_from_stats

N_VIDEOS = 30


class FixedCaptions:
    """A captioner stand-in: every video's caption comes from a table."""

    def __init__(self, captions):
        from s2vt.decoding.search import DecodeConfig

        self.captions, self.decoding = captions, DecodeConfig()
        self.models = [None]  # one model: no fusion

    def available(self, vids):
        return list(vids), []

    def caption(self, vids, weights=None, dec=None, progress=False):
        return {v: self.captions[v] for v in vids}


def _captions(refs, vids, kind: str, seed: int):
    """weak: the first words of a reference; strong: a whole reference for most videos."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, v in enumerate(vids):
        r = refs[v][(i + seed) % len(refs[v])]
        keep = 3 if kind == "weak" else (len(r.split()) if rng.random() < 0.8 else 4)
        out[v] = " ".join(r.split()[:keep])
    return out


@pytest.fixture(scope="module")
def evaluations(msvd_dir, tmp_path_factory):
    """Evaluation JSONs written by s2vt.evaluation.evaluate on real MSVD references: a weak and a strong system,
    3 seeds each, and a JSON of the previous format."""
    from s2vt.evaluation.evaluate import evaluate
    from s2vt.evaluation.metrics import ptb_tokenize, shared_meteor

    refs = {}
    for line in (msvd_dir / "sents_test_lc_nopunc.txt").read_text().splitlines():
        vid, cap = line.split("\t")
        refs.setdefault(vid, []).append(cap)
    vids = sorted(refs, key=lambda v: int(v[3:]))[:N_VIDEOS]
    refs = {v: refs[v] for v in vids}
    caps = {(kind, s): _captions(refs, vids, kind, s) for kind in ("weak", "strong") for s in range(3)}
    ptb_tokenize([c for cs in caps.values() for c in cs.values()] + [r for rs in refs.values() for r in rs])
    out, evs = tmp_path_factory.mktemp("evals"), {}
    meteor = shared_meteor()
    for (kind, s), c in caps.items():
        ev = evaluate(FixedCaptions(c), refs, meteor=meteor)
        ev.update(dataset="msvd", split="test")
        evs[kind, s] = ev
        (out / f"{kind}{s}.json").write_text(json.dumps(ev))
    old = dict(evs["weak", 0], videos={v: {k: x for k, x in r.items() if k != "stats"}
                                       for v, r in evs["weak", 0]["videos"].items()})
    del old["format"]
    (out / "old.json").write_text(json.dumps(old))
    return out, evs


def test_evaluate_keeps_statistics_that_give_back_its_scores(evaluations):
    from s2vt.evaluation.metric_stats import corpus_from_stats

    _, evs = evaluations
    ev = evs["strong", 1]
    assert ev["format"] == 2 and len(ev["videos"]) == N_VIDEOS
    again = corpus_from_stats({v: r["stats"] for v, r in ev["videos"].items()})
    for name, value in ev["metrics"].items():
        assert abs(again[name] - value) <= 1e-9, name


def test_observed_differences_are_the_evaluations_differences(evaluations):
    d, evs = evaluations
    systems = load_systems([("weak", [d / f"weak{s}.json" for s in range(3)]),
                            ("strong", [d / f"strong{s}.json" for s in range(3)])])
    assert [x.stats.shape for x in systems] == [(3, N_VIDEOS, 35)] * 2
    r = compare(systems, resamples=2000, seed=0)
    assert r["baseline"] == "weak" and r["resamples"] == 2000 and r["method"] == "bootstrap"
    for m in METRICS:
        expected = np.mean([evs["strong", s]["metrics"][m] - evs["weak", s]["metrics"][m] for s in range(3)])
        got = r["systems"]["strong"][m]
        assert abs(got["diff"] - expected) <= 1e-9, m
        assert got["ci"][0] < got["diff"] < got["ci"][1]
    assert r["systems"]["strong"]["METEOR"]["diff"] > 0.1 and r["systems"]["strong"]["METEOR"]["p"] < 0.01
    assert compare(systems, resamples=2000, seed=0) == r          # a fixed seed: the same numbers
    assert compare(systems, resamples=2000, seed=1) != r


def test_each_resample_is_scored_as_its_own_corpus(evaluations):
    """The vectorised bootstrap equals a loop that builds each resample's corpus (videos drawn,
    seeds drawn, metric averaged over the drawn seeds) and scores it from scratch."""
    d, _ = evaluations
    weak, strong = load_systems([("weak", [d / f"weak{s}.json" for s in range(3)]),
                                 ("strong", [d / f"strong{s}.json" for s in range(2)])])
    got = bootstrap([weak, strong], resamples=7, seed=3, chunk=4)
    rng = np.random.default_rng(3)
    for start, rows in ((0, 4), (4, 3)):
        counts, picks = _video_counts(rng, rows, N_VIDEOS), _seed_picks(rng, rows, [weak, strong])
        for i in range(rows):
            draw = np.repeat(np.arange(N_VIDEOS), counts[i].astype(int))
            assert len(draw) == N_VIDEOS
            for x in (weak, strong):
                runs = [x.stats[s][draw] for s in picks[x.seeds][i]]
                expect = {"METEOR": np.mean([float(meteor_from_stats(r[:, :23].sum(0))) for r in runs]),
                          "Bleu_4": np.mean([float(bleu_from_stats(r[:, 23:33].sum(0))) for r in runs]),
                          "CIDEr": np.mean([r[:, 33].mean() for r in runs]),
                          "ROUGE_L": np.mean([r[:, 34].mean() for r in runs])}
                for m, v in expect.items():
                    assert got[x.name][m][start + i] == pytest.approx(v, abs=1e-12), (m, i)


def test_a_system_against_itself_is_no_difference(evaluations):
    d, _ = evaluations
    a = load_systems([("a", [d / "weak0.json"]), ("b", [d / "weak0.json"])])
    for method in ("bootstrap", "ar"):
        r = compare(a, method, resamples=500)["systems"]["b"]
        for m in METRICS:
            assert r[m] == {"diff": 0.0, "ci": [0.0, 0.0], "p": 1.0}


def test_randomisation_finds_the_strong_system_and_needs_paired_runs(evaluations):
    from s2vt.evaluation.compare import CompareError

    d, _ = evaluations
    weak, strong = load_systems([("weak", [d / "weak0.json"]), ("strong", [d / "strong0.json"])])
    r = compare([weak, strong], "ar", resamples=2000)["systems"]["strong"]
    assert r["METEOR"]["p"] < 0.01 and r["CIDEr"]["p"] < 0.01
    shuffled = randomisation(weak, strong, resamples=2000)["METEOR"]
    assert abs(shuffled.mean()) < r["METEOR"]["diff"] / 5       # swaps centre the difference on zero
    three = load_systems([("weak", [d / f"weak{s}.json" for s in range(3)]), ("strong", [d / "strong0.json"])])
    with pytest.raises(CompareError, match="swaps runs seed by seed"):
        compare(three, "ar", resamples=10)


def test_p_counts_the_observed_difference_as_a_draw():
    diffs = np.array([0.0, 0.1, -0.1, 0.3])  # |d| - mean|d| = [-0.125, -0.025, -0.025, 0.175]
    assert p_bootstrap(diffs, 0.1) == pytest.approx((1 + 1) / 5)
    assert p_bootstrap(diffs, 0.2) == pytest.approx(1 / 5)


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compare_command_prints_a_table_and_one_json_line(evaluations, capsys):
    d, _ = evaluations
    rc, out, err = _cli(capsys, "compare", d / "weak0.json", d / "strong0.json", "--resamples", "1000", "--json")
    assert rc == 0, err
    lines = out.strip().splitlines()
    r = json.loads(lines[-1])
    assert set(r) == {"baseline", "systems", "resamples", "method"} and r["resamples"] == 1000
    assert r["baseline"] == str(d / "weak0.json") and list(r["systems"]) == [str(d / "strong0.json")]
    row = r["systems"][str(d / "strong0.json")]["METEOR"]
    assert set(row) == {"diff", "ci", "p"} and len(row["ci"]) == 2
    assert any(line.split()[1:3] == ["METEOR", f"{100 * row['diff']:+.2f}"] for line in lines[:-1])
    assert "significant at p < 0.05" in out
    rc, again, _ = _cli(capsys, "compare", d / "weak0.json", d / "strong0.json", "--resamples", "1000", "--json")
    assert again == out
    rc, out, err = _cli(capsys, "compare", "--system", "weak", *[d / f"weak{s}.json" for s in range(3)],
                        "--system", "strong", *[d / f"strong{s}.json" for s in range(3)],
                        "--method", "ar", "--resamples", "500", "--seed", "4", "--json")
    assert rc == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["method"] == "ar" and r["baseline"] == "weak" and set(r["systems"]["strong"]) == set(METRICS)


def _mismatched(d, tmp_path):
    ev = json.loads((d / "weak1.json").read_text())
    first = next(iter(ev["videos"]))
    ev["videos"][first]["references"] = ev["videos"][first]["references"][1:]
    (tmp_path / "refs.json").write_text(json.dumps(ev))
    ev = json.loads((d / "weak1.json").read_text())
    ev["split"] = "val"
    (tmp_path / "split.json").write_text(json.dumps(ev))
    ev = json.loads((d / "weak1.json").read_text())
    ev["videos"][first]["stats"]["bleu"] = [1, 2]
    (tmp_path / "stats.json").write_text(json.dumps(ev))
    (tmp_path / "broken.json").write_text('{"videos": ')


@pytest.mark.parametrize("name, needles", [
    ("old.json", ["old.json", "older format", "re-run s2vt evaluate"]),
    ("refs.json", ["refs.json", "references of", "differ"]),
    ("split.json", ["split.json", "split 'val'", "same split"]),
    ("stats.json", ["stats.json", "malformed statistics", "stats.bleu must be 10"]),
    ("broken.json", ["broken.json"]),
    ("absent.json", ["absent.json"]),
])
def test_compare_refuses_what_cannot_be_compared_in_one_line(evaluations, tmp_path, capsys, name, needles):
    d, _ = evaluations
    _mismatched(d, tmp_path)
    path = d / name if name == "old.json" else tmp_path / name
    rc, out, err = _cli(capsys, "compare", d / "weak0.json", path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("argv, needle", [
    (["--resamples", "0"], "--resamples 0"), (["--seed", "-1"], "--seed -1"), ([], "at least two systems"),
    (["--system", "x"], "--system x: give"),
])
def test_compare_refuses_bad_flags(evaluations, capsys, argv, needle):
    d, _ = evaluations
    files = [] if "--system" in argv or not argv else [d / "weak0.json", d / "strong0.json"]
    rc, _, err = _cli(capsys, "compare", *files, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    rc, _, err = _cli(capsys, "compare", d / "weak0.json", "--system", "s", d / "strong0.json")
    assert rc == 2 and "not both" in err


def test_bleu_bootstrap_p_agrees_with_sacrebleu(msvd_dir):
    """On pre-tokenised text, where sacrebleu's BLEU equals coco-caption's, the paired-bootstrap
    p-value of BLEU-4 agrees with sacrebleu's within Monte-Carlo error (independent draws)."""
    pytest.importorskip("sacrebleu")
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    from s2vt.evaluation.metric_stats import METEOR_WIDTH, bleu_video_stats

    refs = {}
    for line in (msvd_dir / "sents_test_lc_nopunc.txt").read_text().splitlines():
        vid, cap = line.split("\t")
        refs.setdefault(vid, []).append(cap)
    vids = sorted(refs, key=lambda v: int(v[3:]))[:300]

    def hypotheses(seed):  # a reference of each video, one to four words shorter
        rng = np.random.default_rng(seed)
        words = [refs[v][rng.integers(len(refs[v]))].split() for v in vids]
        return [" ".join(w[:max(2, len(w) - rng.integers(1, 5))]) for w in words]

    hyps = {"a": hypotheses(1), "b": hypotheses(2)}
    streams = [[refs[v][j] if j < len(refs[v]) else None for v in vids] for j in range(max(map(len, refs.values())))]
    systems = [System(k, np.array([[[0.0] * METEOR_WIDTH + bleu_video_stats(c, refs[v]) + [0.0, 0.0]
                                     for c, v in zip(h, vids)]])) for k, h in hyps.items()]
    for x, h in zip(systems, hyps.values()):
        ours = float(bleu_from_stats(x.stats[0, :, METEOR_WIDTH:METEOR_WIDTH + 10].sum(0)))
        assert abs(BLEU(tokenize="none").corpus_score(h, streams).score / 100 - ours) <= 1e-9
    resamples = 4000
    p = compare(systems, resamples=resamples, seed=0)["systems"]["b"]["Bleu_4"]["p"]
    _, scores = PairedTest(list(hyps.items()), {"BLEU": BLEU(tokenize="none")}, streams, test_type="bs",
                           n_samples=resamples)()
    theirs = scores["BLEU"][1].p_value
    assert 0.02 < theirs < 0.5                       # a case where p is neither 0 nor 1
    assert abs(p - theirs) <= 4.5 * np.sqrt(2 * theirs * (1 - theirs) / resamples), (p, theirs)


def _rows(evs, kind, seeds=range(3)):
    per_seed = [evs[kind, s]["metrics"] for s in seeds]
    per_video = [{v: r["stats"] for v, r in evs[kind, s]["videos"].items()} for s in seeds]
    return per_seed, per_video


def test_findings_carry_the_paired_difference_ci_and_p(evaluations):
    from s2vt.evaluation.benchmark import findings as bench_findings
    from s2vt.evaluation.stats import compare as finding, findings_markdown, verdict
    from s2vt.apps.study import paired_gain

    _, evs = evaluations
    (sw, vw), (ss, vs) = _rows(evs, "weak"), _rows(evs, "strong")
    per_seed, per_video = {"strong": ss, "weak": sw}, {"strong": vs, "weak": vw}
    f = finding(per_seed, "strong", "weak", "CIDEr", per_video)
    assert abs(f["diff"] - (f["means"][0] - f["means"][1])) <= 1e-9
    assert f["ci"][0] < f["diff"] < f["ci"][1] and f["p"] < 0.05 and f["significant"] is True
    assert "significant at p < 0.05" in verdict(f) and f"p = {f['p']:.4f}" in verdict(f)
    assert "p" not in finding(per_seed, "strong", "weak", "CIDEr")       # without statistics: as before
    back = finding(per_seed, "weak", "strong", "CIDEr", per_video)
    assert back["diff"] == pytest.approx(-f["diff"]) and not back["holds"]
    g = paired_gain(per_seed, "strong", "weak", "CIDEr", per_video)
    assert abs(g["diff"] - g["mean_gain"]) <= 1e-9 and g["p"] == f["p"] and g["ci"] == f["ci"]
    md = findings_markdown({"strong above weak": f, "gain": g})
    assert f"| strong above weak | CIDEr | {100 * f['means'][0]:.1f} vs {100 * f['means'][1]:.1f} | " \
           f"{100 * f['diff']:+.1f} |" in md and f"{f['p']:.4f} | yes |" in md
    results = {"RGB+Flow": {"c": ss}, "RGB": {"c": sw}}
    b = bench_findings(results, ["c"], {"RGB+Flow": {"c": vs}, "RGB": {"c": vw}})["RGB+Flow above RGB (c)"]
    assert b["metric"] == "METEOR" and b["p"] < 0.05 and b["seeds"] == [3, 3]


def test_report_against_a_baseline_puts_the_videos_that_differ_most_first(tmp_path, capsys):
    from s2vt.cli.app import main

    def ev(captions, meteors):
        vids = {v: {"caption": c, "references": ["a red ball moves left"], "METEOR": m, "CIDEr": 2 * m}
                for v, c, m in zip(("v1", "v2", "v3"), captions, meteors)}
        return {"metrics": {"METEOR": sum(meteors) / 3}, "videos": vids}

    new, base = tmp_path / "new.json", tmp_path / "base.json"
    new.write_text(json.dumps(ev(["a red ball moves left", "a ball", "a red ball"], [0.9, 0.2, 0.5])))
    base.write_text(json.dumps(ev(["a blue cube", "a ball", "a red cube"], [0.1, 0.25, 0.3])))
    assert main(["report", str(new), "--against", str(base), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    order = [page.index(f'data-vid="{v}"') for v in ("v1", "v3", "v2")]  # |diff| 80, 20, 5 (x100)
    assert order == sorted(order) and "+80.0" in page and "-5.0" in page and "baseline: a blue cube" in page
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"metrics": {}, "videos": {"v9": {"caption": "x", "references": [], "METEOR": 0.1}}}))
    capsys.readouterr()
    assert main(["report", str(new), "--against", str(other), "--out", str(tmp_path / "o.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captions other videos" in err[0] and not (tmp_path / "o.html").exists()
