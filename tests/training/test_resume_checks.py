"""A resumed extraction trusts nothing it did not verify; merges refuse non-finite shards; a run
accounts for every video it took."""
import h5py
import numpy as np
import pytest

from s2vt.runtime.errors import S2VTError
from s2vt.features.extract import extract, video_items
from s2vt.features.config import ExtractConfig
from s2vt.features.store import FeatureStore, merge_stores

from videos import moving_square, write

CFG = ExtractConfig(stride=3, input_size=32, crop_ratio=1.0, workers=0)


@pytest.fixture()
def clips(tmp_path):
    d = tmp_path / "v"
    d.mkdir()
    for k, dx in enumerate((2, -2, 3)):
        write(d / f"c{k}.avi", moving_square(n=7, dx=dx, seed=k))
    return d


def _poison(path, vid):
    with h5py.File(path, "a") as f:
        ds = f["videos"][vid]["features"]
        x = ds[()]
        x[0, 0] = np.nan
        ds[...] = x


def test_a_resumed_store_with_a_non_finite_video_recomputes_it(clips, tmp_path):
    out = tmp_path / "f.h5"
    extract(video_items([clips]), out, CFG, progress=False)
    clean = {v: FeatureStore(out).features(v).copy() for v in ("c0", "c1", "c2")}
    _poison(out, "c1")
    assert FeatureStore(out).nonfinite_ids() == ["c1"]
    s = extract(video_items([clips]), out, CFG, progress=False)
    assert s.done == 1 and s.skipped == 2  # c1 computed again, the others trusted after their check
    st = FeatureStore(out)
    assert st.nonfinite_ids() == []
    for v, x in clean.items():
        np.testing.assert_array_equal(st.features(v), x)


def test_merge_refuses_a_shard_with_non_finite_features_and_writes_nothing(clips, tmp_path):
    items = video_items([clips])
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract(items[:2], a, CFG, progress=False, shard=(0, 2))
    extract(items[2:], b, CFG, progress=False, shard=(1, 2))
    _poison(b, "c2")
    with pytest.raises(S2VTError, match=r"b.h5: video c2 has non-finite features .* nothing was merged"):
        merge_stores(tmp_path / "m.h5", [a, b])
    assert not (tmp_path / "m.h5").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "v"]


def test_a_video_neither_stored_nor_failed_ends_the_run_with_exit_1(clips, tmp_path, monkeypatch):
    import s2vt.features.extract as ex

    real = ex._run
    monkeypatch.setattr(ex, "_run", lambda todo, *a: real(todo[1:], *a))  # a worker that lost one video
    with pytest.raises(S2VTError, match=r"1 video\(s\) were neither extracted nor reported as failed \(c0\)") as e:
        extract(video_items([clips]), tmp_path / "f.h5", CFG, progress=False)
    assert e.value.exit_code == 1
    monkeypatch.setattr(ex, "_run", real)
    s = extract(video_items([clips]), tmp_path / "f.h5", CFG, progress=False)  # the re-run extracts it
    assert s.done == 1 and sorted(FeatureStore(tmp_path / "f.h5").ids) == ["c0", "c1", "c2"]
