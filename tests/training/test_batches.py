"""The feature bank's batches equal the plain per-sample batches, value by value."""
from typing import Sequence

import numpy as np
import pytest
import torch

from s2vt.features.frames import cap_frames
from s2vt.training.batches import (Batch, BatchStream, CaptionTable, EpochSampler, FeatureBank,
                          frame_permutation, place_bank)
from s2vt.features.store import FeatureStore, FeatureWriter
from s2vt.data.vocab import Vocab

WORDS = [f"w{i}" for i in range(30)]


def reference_batch(store: FeatureStore, table: CaptionTable, idx: Sequence[int], max_frames: int,
                    shuffle: bool = False, seed: int = 0, epoch: int = 0) -> Batch:
    """The same batch written the plain way (per sample, zero padding), for tests."""
    feats = []
    for i in idx:
        f = store.features(table.vids[table.video_row[i]])
        f = f[cap_frames(len(f), max_frames)]
        feats.append(f[frame_permutation(seed, epoch, int(i), len(f))] if shuffle else f)
    T, L = max(len(f) for f in feats), int(table.lengths[list(idx)].max())
    x = np.zeros((len(idx), T, feats[0].shape[1]), np.float32)
    win, tgt = np.zeros((len(idx), L + 1), np.int64), np.zeros((len(idx), L + 1), np.int64)
    for b, (i, f) in enumerate(zip(idx, feats)):
        x[b, : len(f)] = f
        n = table.lengths[i]
        win[b, 0], win[b, 1: n + 1] = Vocab.bos, table.ids[i, :n]
        tgt[b, :n], tgt[b, n] = table.ids[i, :n], Vocab.eos
    return Batch(torch.from_numpy(x), torch.tensor([len(f) for f in feats]), torch.from_numpy(win),
                 torch.from_numpy(tgt), torch.from_numpy(table.lengths[list(idx)] + 1))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A store of 9 videos with 0..14 frames of 5-d features and captions of 1..7 words."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("bank") / "f.h5"
    w = FeatureWriter(path, {"stream": "rgb", "dim": 5})
    items = []
    for i, n in enumerate([3, 14, 7, 1, 12, 9, 2, 11, 6]):
        w.add(f"v{i}", rng.standard_normal((n, 5)).astype(np.float32), np.arange(n) * 10, {})
        items.append((f"v{i}", [" ".join(rng.choice(WORDS, rng.integers(1, 8))) for _ in range(rng.integers(1, 4))]))
    w.finalize()
    return FeatureStore(path), items, Vocab(WORDS)


def assert_same(a, b):
    for name in ("feats", "feat_lens", "words_in", "targets", "word_lens"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert torch.equal(x.float(), y.float()), name


def stream_for(store, items, vocab, bank: bool, shuffle=False, max_frames=8, seed=3):
    vids = [v for v, _ in items]
    table = CaptionTable(items, vocab, max_words=5, vids=vids)
    b = FeatureBank.build(store, vids, max_frames) if bank else None
    return table, BatchStream(table, b, "cpu", max_frames, shuffle, seed, store)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("bank", [True, False])
def test_batches_equal_plain_per_sample_batches(corpus, shuffle, bank):
    store, items, vocab = corpus
    table, stream = stream_for(store, items, vocab, bank, shuffle)
    sampler = EpochSampler(len(table), 4, seed=3)
    for epoch in (0, 1):
        order = sampler.batches(epoch)
        got = list(stream.epoch(order, epoch))
        assert len(got) == sampler.batches_per_epoch() == len(order)
        for idx, batch in zip(order, got):
            ref = reference_batch(store, table, stream.sort_batch(idx), 8, shuffle, seed=3, epoch=epoch)
            assert_same(batch, ref)
            seq = (batch.feat_lens + batch.word_lens).tolist()
            assert seq == sorted(seq, reverse=True)  # packs without a permutation
            assert sorted(stream.sort_batch(idx).tolist()) == sorted(idx)


def test_frames_are_capped_uniformly_and_shuffled_per_seed_epoch_sample(corpus):
    store, items, vocab = corpus
    assert cap_frames(14, 8).tolist() == [0, 2, 4, 6, 7, 9, 11, 13] and cap_frames(5, 8).tolist() == [0, 1, 2, 3, 4]
    table, stream = stream_for(store, items, vocab, True, shuffle=True)
    i = int(np.flatnonzero(table.video_row == 1)[0])  # a caption of v1 (14 frames -> 8)
    b0 = next(stream.epoch([[i]], 0))
    b1 = next(stream.epoch([[i]], 1))
    capped = store.features("v1")[cap_frames(14, 8)]
    assert np.array_equal(b0.feats[0].numpy(), capped[frame_permutation(3, 0, i, 8)])
    assert not torch.equal(b0.feats, b1.feats)  # another epoch, another order
    assert sorted(map(tuple, b0.feats[0].tolist())) == sorted(map(tuple, capped.tolist()))  # same frames


def test_ddp_slices_cover_each_global_batch_and_resume_skips_done_batches(corpus):
    store, items, vocab = corpus
    n = len(CaptionTable(items, vocab, 5))
    one = EpochSampler(n, 4, seed=1).batches(2)
    r0 = EpochSampler(n, 4, seed=1, rank=0, world=2).batches(2)
    r1 = EpochSampler(n, 4, seed=1, rank=1, world=2).batches(2)
    for g, a, b in zip(one, r0, r1):
        assert sorted(a + b) == sorted(g) and a == g[0::2] and b == g[1::2]
    assert EpochSampler(n, 4, seed=1).batches(2, start_batch=2) == one[2:]


def test_bank_holds_capped_frames_back_to_back(corpus):
    store, items, vocab = corpus
    vids = [v for v, _ in items]
    bank = FeatureBank.build(store, vids, 8)
    assert bank.lengths.tolist() == [3, 8, 7, 1, 8, 8, 2, 8, 6]
    assert bank.feats.shape == (int(bank.lengths.sum()) + 1, 5) and not bank.feats[-1].any()
    f = store.features("v4")[cap_frames(12, 8)]
    assert np.array_equal(bank.feats[bank.offsets[4]: bank.offsets[4] + 8].numpy(), f)
    assert FeatureBank.nbytes(store, vids, 8, torch.bfloat16) == (int(bank.lengths.sum()) + 1) * 5 * 2


def test_bank_is_placed_where_it_fits(monkeypatch):
    from s2vt.training import batches

    monkeypatch.setattr(batches, "available_memory", lambda: 1000)
    assert place_bank(400, torch.device("cpu")) == "device"
    assert place_bank(600, torch.device("cpu")) == "store"


def test_captions_are_tokenised_once_with_lengths(corpus):
    store, items, vocab = corpus
    table = CaptionTable([("v0", ["w1 w2 w3", "zzz", "w4"])], vocab, max_words=2)
    # "zzz" is all unknown words -> one <unk>; captions are cut at max_words
    assert table.lengths.tolist() == [2, 1, 1]
    assert table.ids.tolist() == [[vocab.stoi["w1"], vocab.stoi["w2"]], [vocab.unk, 0], [vocab.stoi["w4"], 0]]


def test_bank_serves_captioning_the_same_frames_as_the_store(corpus):
    from s2vt.features.frames import StoreFeatures

    store, items, vocab = corpus
    vids = [v for v, _ in items]
    from_bank = FeatureBank.build(store, vids, 8).source(vids)
    from_store = StoreFeatures(store, 8)
    for v in vids:
        assert torch.equal(from_bank(v), from_store(v)), v


def test_epoch_order_takes_every_seed_up_to_2_63_and_is_unchanged_for_small_ones():
    import torch

    from s2vt.training.batches import EpochSampler

    big = EpochSampler(10, 4, seed=2 ** 63 - 1).batches(3)
    assert sorted(i for b in big for i in b) == list(range(10))
    small = EpochSampler(10, 4, seed=7).batches(2)
    want = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 100003 + 2)).tolist()
    assert [i for b in small for i in b] == want  # the order runs trained with


def test_a_batch_smaller_than_the_world_is_refused_in_one_line(tmp_path, monkeypatch):
    """Rank r takes every world-th sample of a global batch: with fewer samples than processes, a rank
    would get an empty batch."""
    from s2vt.runtime.config import ConfigError
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import train

    with pytest.raises(ConfigError, match=r"^--batch-size 1 is split across 2 processes .* pass --batch-size 2 or more$"):
        EpochSampler(10, 1, rank=1, world=2)
    assert [len(b) for b in EpochSampler(10, 2, rank=1, world=2, drop_last=True).batches(0)] == [1] * 5
    for var, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(var, value)  # torchrun's second process: refused before it waits for its peer
    with pytest.raises(ConfigError, match="--batch-size 1 is split across 2 processes"):
        train(TrainConfig(dataset="synthetic", annotations=str(tmp_path), features=str(tmp_path / "f.h5"),
                          out=str(tmp_path / "run"), batch_size=1), progress=False)
    assert not (tmp_path / "run").exists()
