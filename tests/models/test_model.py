import torch

from s2vt.features.frames import pad_features
from s2vt.models.s2vt import ModelConfig, S2VT
from s2vt.data.vocab import Vocab


def collate_captions(samples):
    """[(feats (T, D), word ids)] -> feats, feat_lens, words_in, targets, word_lens (plain per-sample padding)."""
    feats, caps = zip(*samples)
    x, fl = pad_features(feats)
    L1 = max(len(c) for c in caps) + 1
    win, tgt = torch.zeros(len(caps), L1, dtype=torch.long), torch.zeros(len(caps), L1, dtype=torch.long)
    for i, c in enumerate(caps):
        win[i, 0], win[i, 1:len(c) + 1] = Vocab.bos, torch.tensor(c)
        tgt[i, :len(c)], tgt[i, len(c)] = torch.tensor(c), Vocab.eos
    return x, fl, win, tgt, torch.tensor([len(c) + 1 for c in caps])


def tiny(V=12, D=6, **kw):
    torch.manual_seed(0)
    return S2VT(ModelConfig(feat_dim=D, vocab_size=V, embed=8, hidden=16, dropout=0.0, **kw))


def batch(lens=(3, 5, 2), caps=([4, 5], [6, 7, 8, 9], [10]), D=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return collate_captions([(torch.randn(t, D, generator=g), list(c)) for t, c in zip(lens, caps)])


def test_shapes_finite_loss_and_a_step():
    m = tiny()
    feats, fl, win, tgt, wl = batch()
    logits, loss = m(feats, fl, win, tgt, wl)
    assert feats.shape == (3, 5, 6) and win.shape == (3, 5)
    assert logits.shape == (3, 5, 12) and torch.isfinite(loss)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss.backward()
    opt.step()
    _, loss2 = m(feats, fl, win, tgt, wl)
    assert loss2 < loss


def test_padding_targets_contribute_zero():
    m = tiny()
    feats, fl, win, tgt, wl = batch()
    logits, loss = m(feats, fl, win, tgt, wl)
    # recompute by hand over real caption steps only
    tot = 0.0
    for i, L in enumerate(wl.tolist()):
        lp = torch.log_softmax(logits[i, :L], -1)
        tot -= lp[torch.arange(L), tgt[i, :L]].sum()
    torch.testing.assert_close(loss, tot / 3)
    # extra padding columns (pad inputs, pad targets) change nothing
    pad = torch.zeros(3, 4, dtype=torch.long)
    logits2, loss2 = m(feats, fl, torch.cat([win, pad], 1), torch.cat([tgt, pad], 1), wl)
    assert logits2.shape == (3, 9, 12)
    torch.testing.assert_close(loss2, loss)
    # while a real target in a padded slot would count
    tgt3 = tgt.clone()
    tgt3[2, 3] = 5
    assert not torch.allclose(m(feats, fl, win, tgt3, wl)[1], loss)


def test_output_does_not_depend_on_batch_company():
    m = tiny().eval()
    feats, fl, win, tgt, wl = batch()
    logits, _ = m(feats, fl, win, tgt, wl)
    for i in range(3):
        f1, fl1, w1, t1, wl1 = feats[i:i + 1, : fl[i]], fl[i:i + 1], win[i:i + 1, : wl[i]], tgt[i:i + 1, : wl[i]], wl[i:i + 1]
        alone, _ = m(f1, fl1, w1, t1, wl1)
        torch.testing.assert_close(alone[0], logits[i, : wl[i]], atol=1e-5, rtol=1e-5)


def test_encode_step_agree_with_teacher_forced_forward():
    m = tiny().eval()
    feats, fl, win, tgt, wl = batch()
    logits, _ = m(feats, fl, win, tgt, wl)
    state = m.encode(feats, fl)
    for t in range(win.shape[1]):
        lp, state = m.step(win[:, t], state)
        for i in range(3):
            if t < wl[i]:
                torch.testing.assert_close(lp[i], torch.log_softmax(logits[i, t], -1), atol=1e-5, rtol=1e-5)


def test_reorder_state_selects_rows():
    m = tiny().eval()
    feats, fl, *_ = batch()
    s = m.encode(feats, fl)
    r = m.reorder_state(s, torch.tensor([2, 0]))
    assert torch.equal(r[0][0][:, 0], s[0][0][:, 2]) and torch.equal(r[1][1][:, 1], s[1][1][:, 0])


def test_overfits_a_handful_of_clips():
    torch.manual_seed(0)
    m = S2VT(ModelConfig(feat_dim=6, vocab_size=12, embed=16, hidden=32, dropout=0.0))
    feats, fl, win, tgt, wl = batch(lens=(3, 4, 2, 5), caps=([4, 5, 6], [7, 8], [9, 10, 11], [4, 4]))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(300):
        _, loss = m(feats, fl, win, tgt, wl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_token = loss.item() * 4 / wl.sum().item()
    assert per_token < 0.02
