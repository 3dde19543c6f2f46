"""Decoding tested with a fake decoder whose next-word probabilities are a hand-written table."""

import torch

from s2vt.runtime.errors import S2VTError

from s2vt.decoding.search import EOS, Fusion, beam_search, greedy
from s2vt.models.s2vt import ModelConfig, S2VT

# vocabulary: 0 pad, 1 bos, 2 eos, 3 unk, 4 "a", 5 "b", 6 "c"
V = 7


class TableDecoder:
    """State = the tokens so far; next-token probabilities from TABLE[last token]."""

    cfg = type("C", (), {"vocab_size": V})()

    def __init__(self, table):
        self.table = table

    def encode(self, feats, lens):
        return torch.zeros(feats.shape[0], 1, dtype=torch.long)  # (B, 1) last token = bos placeholder

    def step(self, prev, state):
        rows = [self.table.get(int(t), {EOS: 1.0}) for t in prev.tolist()]
        p = torch.full((len(rows), V), 1e-12)
        for i, r in enumerate(rows):
            for tok, pr in r.items():
                p[i, tok] = pr
        return p.log(), state

    @staticmethod
    def reorder_state(state, order):
        return state.index_select(0, order)


# after <bos>: "a" 0.5, "b" 0.4, eos 0.1
# after "a":  eos 0.3, "c" 0.7 ... after "c": eos 1.0
# after "b":  eos 1.0
TABLE = {1: {4: 0.5, 5: 0.4, EOS: 0.1}, 4: {EOS: 0.3, 6: 0.7}, 5: {EOS: 1.0}, 6: {EOS: 1.0}}
INPUT = (torch.zeros(1, 2, 3), torch.tensor([2]))


def test_greedy_follows_argmax():
    # bos -> a (0.5) -> c (0.7) -> eos (1.0)
    assert greedy(TableDecoder(TABLE), INPUT, max_len=10) == [[4, 6]]


def test_beam_finds_higher_scoring_path_than_greedy():
    table = {1: {4: 0.5, 5: 0.45, EOS: 0.05}, 4: {6: 0.4, 5: 0.35, EOS: 0.25}, 5: {EOS: 1.0}, 6: {EOS: 1.0}}
    # greedy: a c   -> 0.5*0.4*1 = 0.20 ; beam: b eos -> 0.45*1 = 0.45 (2 steps) beats a c eos (3 steps)
    assert greedy(TableDecoder(table), INPUT) == [[4, 6]]
    assert beam_search(TableDecoder(table), INPUT, beam=2, len_penalty=0.0) == [[5]]


def test_length_penalty_changes_choice():
    table = {1: {4: 0.6, EOS: 0.4}, 4: {5: 0.9, EOS: 0.1}, 5: {6: 0.9, EOS: 0.1}, 6: {EOS: 1.0}}
    # raw scores: "" = log .4 = -0.92 ; "a b c" = log(.6*.9*.9) = -0.72 -> prefers "a b c" even without normalisation
    # "a" = log(.6*.1)=-2.8
    assert beam_search(TableDecoder(table), INPUT, beam=3, len_penalty=0.0) == [[4, 5, 6]]
    table[4] = {5: 0.5, EOS: 0.5}
    # "" : -0.916 (1 step); "a": log .3 = -1.20 (2 steps); "a b c": log(.6*.5*.9) = -1.31 (4 steps)
    assert beam_search(TableDecoder(table), INPUT, beam=3, len_penalty=0.0) == [[]]
    # per-step normalisation: "" -0.916, "a" -0.60, "a b c" -0.33 -> longest wins
    assert beam_search(TableDecoder(table), INPUT, beam=3, len_penalty=1.0) == [[4, 5, 6]]


def test_max_len_forces_eos():
    loop = {1: {4: 0.9, EOS: 0.1}, 4: {4: 0.9, EOS: 0.1}}
    assert greedy(TableDecoder(loop), INPUT, max_len=4) == [[4, 4, 4]]
    assert beam_search(TableDecoder(loop), INPUT, beam=2, max_len=4, len_penalty=0.0) == [[]]


def _model(seed):
    torch.manual_seed(seed)
    return S2VT(ModelConfig(feat_dim=5, vocab_size=9, embed=8, hidden=16, dropout=0.0)).eval()


def _inputs(B=5, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 5, generator=g) * 3, torch.tensor([6, 3, 1, 5, 2][:B])


def test_beam_one_equals_greedy_on_a_model():
    m = _model(0)
    x = _inputs()
    # without length normalisation a 1-beam search is exactly greedy
    assert beam_search(m, x, beam=1, max_len=12, len_penalty=0.0) == greedy(m, x, max_len=12)


def test_batched_equals_one_by_one():
    m = _model(0)
    feats, lens = _inputs()
    batched = beam_search(m, (feats, lens), beam=4, max_len=12)
    for i in range(len(lens)):
        one = beam_search(m, (feats[i:i + 1, : lens[i]], lens[i:i + 1]), beam=4, max_len=12)
        assert one[0] == batched[i]
    assert greedy(m, (feats, lens)) == [greedy(m, (feats[i:i + 1, : lens[i]], lens[i:i + 1]))[0] for i in range(5)]


def test_fusion_alpha_one_equals_rgb_model_alone():
    rgb, flow = _model(0), _model(1)
    x_rgb, x_flow = _inputs(seed=1), _inputs(seed=2)
    fused = Fusion([(rgb, 1.0), (flow, 0.0)])
    assert beam_search(fused, [x_rgb, x_flow], beam=3) == beam_search(rgb, x_rgb, beam=3)
    half = Fusion([(rgb, 0.5), (flow, 0.5)])
    state = half.encode([x_rgb, x_flow])
    lp, _ = half.step(torch.full((5,), 1), state)
    a, _ = rgb.step(torch.full((5,), 1), rgb.encode(*x_rgb))
    b, _ = flow.step(torch.full((5,), 1), flow.encode(*x_flow))
    torch.testing.assert_close(lp, 0.5 * a + 0.5 * b)


def test_fusion_refuses_different_vocabularies():
    import pytest

    torch.manual_seed(0)
    other = S2VT(ModelConfig(feat_dim=5, vocab_size=11, embed=8, hidden=16))
    with pytest.raises(S2VTError, match="share one vocabulary"):
        Fusion([(_model(0), 0.5), (other, 0.5)])


def _exhaustive_best(table, max_len, len_penalty):
    """Best caption by enumerating every token sequence: score = sum log p / (len + 1) ** len_penalty."""
    import itertools
    import math

    words = [t for t in range(3, V)]
    best, best_seq = -math.inf, None
    for n in range(max_len):  # n words, then <eos> (step n + 1 <= max_len)
        for seq in itertools.product(words, repeat=n):
            prev, lp = 1, 0.0
            for tok in list(seq) + [EOS]:
                p = table.get(prev, {EOS: 1.0}).get(tok, 1e-12)
                lp += math.log(p)
                prev = tok
            score = lp / float(n + 1) ** len_penalty
            if score > best + 1e-9:
                best, best_seq = score, list(seq)
    return best_seq


def test_beam_search_with_length_penalty_matches_exhaustive_search():
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        table = {}
        for prev in (1, 3, 4, 5, 6):  # a random Markov table over every token
            p = torch.rand(V, generator=g) ** 3
            p[0] = p[1] = 0
            p = p / p.sum()
            table[prev] = {t: float(p[t]) for t in range(2, V)}
        for penalty in (0.0, 0.7, 1.0, 2.0):
            want = _exhaustive_best(table, max_len=4, len_penalty=penalty)
            got = beam_search(TableDecoder(table), INPUT, beam=V ** 3, max_len=4, len_penalty=penalty)
            assert got == [want], (trial, penalty)
