"""Per-video sufficient statistics give back coco-caption's corpus scores exactly."""
import contextlib
import io

import numpy as np
import pytest

from s2vt.evaluation.metric_stats import (bleu_from_stats, corpus_from_stats, meteor_from_stats, meteor_video_stats)
from s2vt.evaluation.metrics import ptb_tokenize, score


@pytest.fixture(scope="module")
def scored(msvd_dir):
    """40 real MSVD test videos; candidates: another video's caption, a shortened own one, or a
    reference itself (a perfectly matched METEOR segment). METEOR's statistics come from
    pycocoevalcap's own METEOR process (its ``SCORE`` call), the others from :func:`score`."""
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

    refs = {}
    for line in (msvd_dir / "sents_test_lc_nopunc.txt").read_text().splitlines():
        vid, cap = line.split("\t")
        refs.setdefault(vid, []).append(cap)
    vids = sorted(refs, key=lambda v: int(v[3:]))[:40]
    cands = {}
    for i, v in enumerate(vids):
        cands[v] = (refs[vids[(i + 1) % len(vids)]][0] if i % 3 == 0 else refs[v][2] if i % 5 == 0
                    else " ".join(refs[v][1].split()[:4]))
    refs = {v: refs[v] for v in vids}
    coco = CocoMeteor()  # its JVM loads while the tokenizer runs
    stats = {}
    corpus, _ = score(refs, cands, use_meteor=False, stats=stats)
    tok = dict(zip(vids, ptb_tokenize([cands[v] for v in vids])))
    gts = {v: [r for r in ptb_tokenize(refs[v]) if r] for v in vids}
    res = {v: [tok[v]] for v in vids}
    for v in vids:
        stats[v]["meteor"] = meteor_video_stats(coco._stat(res[v][0], gts[v]))
    return vids, gts, res, stats, corpus, coco


def test_corpus_scores_from_stats_equal_pycocoevalcap(scored):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    vids, gts, res, stats, corpus, coco = scored
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {**{f"Bleu_{n + 1}": bleu[n] for n in range(4)}, "METEOR": coco.compute_score(gts, res)[0],
                "ROUGE_L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}
    ours = corpus_from_stats(stats)
    assert set(ours) == set(expected)
    for name, value in expected.items():
        assert abs(ours[name] - value) <= 1e-9, name
        assert name == "METEOR" or abs(corpus[name] - value) <= 1e-9, name   # score() itself is unchanged
    assert any(stats[v]["meteor"][-3] == 0 for v in vids)  # perfect segments are in the set
    assert 0.2 < ours["METEOR"] < 0.6 and 0.1 < ours["Bleu_4"] < 0.9


def test_a_resample_scores_as_the_scorers_score_its_copies(scored):
    """A multiset of videos (one drawn three times, one left out) scored from summed stats equals
    coco-caption's BLEU and METEOR on a corpus holding those copies."""
    from pycocoevalcap.bleu.bleu import Bleu

    vids, gts, res, stats, _, coco = scored
    draw = [vids[0]] * 3 + vids[2:]
    names = [f"{v}#{i}" for i, v in enumerate(draw)]
    g = {n: gts[v] for n, v in zip(names, draw)}
    r = {n: res[v] for n, v in zip(names, draw)}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(g, r, verbose=0)
    summed = np.sum([stats[v]["bleu"] for v in draw], axis=0)
    assert abs(float(bleu_from_stats(summed)) - bleu[3]) <= 1e-9
    assert abs(float(bleu_from_stats(summed, 1)) - bleu[0]) <= 1e-9
    jar = coco.compute_score(g, r)[0]
    assert abs(float(meteor_from_stats(np.sum([stats[v]["meteor"] for v in draw], axis=0))) - jar) <= 1e-9


def test_scores_vectorise_over_resamples(scored):
    vids, _, _, stats, _, _ = scored
    b = np.array([stats[v]["bleu"] for v in vids], dtype=float)
    m = np.array([stats[v]["meteor"] for v in vids])
    counts = np.random.default_rng(0).multinomial(len(vids), np.full(len(vids), 1 / len(vids)), size=5)
    got_b, got_m = bleu_from_stats(counts @ b), meteor_from_stats(counts @ m)
    assert got_b.shape == got_m.shape == (5,)
    for i, c in enumerate(counts):
        assert got_b[i] == pytest.approx(float(bleu_from_stats((c[:, None] * b).sum(0))), abs=1e-12)
        assert got_m[i] == pytest.approx(float(meteor_from_stats((c[:, None] * m).sum(0))), abs=1e-12)


def test_meteor_stats_line_is_checked():
    with pytest.raises(ValueError, match="23 numbers, this one 3"):
        meteor_video_stats("1.0 2.0 3.0")
    perfect = "3.0 3.0 1.0 1.0 2.0 2.0 1.0 1.0" + " 0.0" * 12 + " 1.0 3.0 3.0"
    assert meteor_video_stats(perfect)[-3] == 0.0      # EVAL adds no chunk for a perfect segment
    assert float(meteor_from_stats(meteor_video_stats(perfect))) == pytest.approx(1.0)
    assert float(meteor_from_stats(np.zeros(23))) == 0.0   # an empty candidate scores 0, as the jar
    assert float(bleu_from_stats(np.zeros(10))) == pytest.approx(0.0, abs=1e-6)
