"""import-features / export-features on real files: MSVD-named arrays, hostile arrays, hand-made stores."""
import json

import h5py
import numpy as np
import pytest

from s2vt.cli.app import main
from s2vt.features.interop import MANIFEST, file_id
from s2vt.features.store import FeatureStore

D = 16
TRAIN, VAL, TEST = ["vid1", "vid2", "vid3", "vid4", "vid5", "vid6"], ["vid1201", "vid1202"], ["vid1301", "vid1302"]


def one_line(capsys, argv, code, *needles):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def clip_names(msvd_dir):
    pairs = [line.split() for line in (msvd_dir / "youtube_mapping.txt").read_text().splitlines() if line.strip()]
    return {vid: clip for clip, vid in pairs}


@pytest.fixture(scope="module")
def npy_dir(msvd_dir, tmp_path_factory):
    """MSVD-style arrays: YouTube clip names (``CLIP.avi.npy``, mapped by youtube_mapping.txt) and ``vidN.npy``."""
    d = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(0)
    clips = clip_names(msvd_dir)
    arrays = {}
    for i, vid in enumerate(TRAIN + VAL + TEST):
        x = rng.standard_normal((3 + i % 4, D)).astype([np.float32, np.float16, np.float64][i % 3])
        arrays[vid] = x
        name = f"{clips[vid]}.avi.npy" if i % 2 else f"{vid}.npy"
        if vid == "vid3":
            np.savez(d / f"{vid}.npz", features=x)
        else:
            np.save(d / name, x)
    return d, arrays


def test_file_id_rule():
    assert file_id("vid1.npy") == "vid1" and file_id("-4wsuPCjDBc_5_15.avi.npy") == "-4wsuPCjDBc_5_15"
    assert file_id("a.b.npz") == "a.b" and file_id("clip.MP4.npy") == "clip" and file_id(".avi.npy") == ".avi"


def test_import_train_evaluate_caption_export_roundtrip(npy_dir, msvd_dir, tiny_synth, tmp_path, capsys):
    src, arrays = npy_dir
    store = tmp_path / "imported.h5"
    argv = ["import-features", src, "--out", store, "--name", "msvd-npy", "--id-map", msvd_dir / "youtube_mapping.txt"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "imported 10 videos" in capsys.readouterr().out
    st = FeatureStore(store)
    assert st.ids == sorted(arrays) and st.signature == {"format_version": 1, "stream": "rgb",
                                                           "backbone": "imported:msvd-npy", "dim": D}
    for vid, x in arrays.items():  # float16/64 stored as float32, exactly as numpy converts them
        assert np.array_equal(st.features(vid), x.astype(np.float32))
        assert st.frame_indices(vid).tolist() == list(range(len(x)))
    before = store.read_bytes()
    assert main([str(a) for a in argv]) == 0  # re-run: everything is there, nothing rewritten
    assert "skipped 10 already in the store" in capsys.readouterr().out and store.read_bytes() == before

    run = tmp_path / "run"
    assert main(["train", "--dataset", "msvd", "--annotations", str(msvd_dir), "--features", str(store), "--out",
                 str(run), "--max-steps", "2", "--batch-size", "4", "--no-val-meteor", "--embed", "8", "--hidden", "8",
                 "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    ck = run / "best.pt"
    ev = tmp_path / "ev.json"
    assert main(["evaluate", "--dataset", "msvd", "--annotations", str(msvd_dir), "--checkpoint", str(ck),
                 "--features", str(store), "--beam", "1", "--out", str(ev)]) == 0, capsys.readouterr().err
    assert sorted(json.loads(ev.read_text())["videos"]) == TEST
    assert "668 of 670 test videos have no features" in capsys.readouterr().err
    root, _ = tiny_synth
    video = sorted((root / "videos").iterdir())[0]
    one_line(capsys, ["caption", video, "--checkpoint", ck], 2, "imported as 'msvd-npy'", "cannot be recomputed")
    one_line(capsys, ["caption", video, "--checkpoint", ck, "--cnn", "efficientnet_lite0"], 2,
             "--cnn efficientnet_lite0 gives 1280-d features", f"trained on {D}-d features imported as 'msvd-npy'")

    out = tmp_path / "exported"
    assert main(["export-features", str(store), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST] + [f"{v}.npy" for v in arrays])
    again = tmp_path / "again.h5"
    assert main(["import-features", str(out), "--out", str(again), "--name", "msvd-npy"]) == 0
    a, b = FeatureStore(store), FeatureStore(again)
    assert a.ids == b.ids and a.signature == b.signature
    assert all(a.features(v).tobytes() == b.features(v).tobytes() for v in a.ids)  # bit for bit
    assert main(["export-features", str(store), "--out", str(out)]) == 0  # its own export may be refreshed
    (out / "notes.txt").write_text("mine")
    one_line(capsys, ["export-features", store, "--out", out], 2, "not empty", "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


def _pickle(p):
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)


HOSTILE = {
    "flat.npy": (lambda p: np.save(p, np.zeros(D, np.float32)), "not 2-D"),
    "cube.npy": (lambda p: np.save(p, np.zeros((2, 3, D), np.float32)), "not 2-D"),
    "empty.npy": (lambda p: np.save(p, np.zeros((0, D), np.float32)), "empty"),
    "nan.npy": (lambda p: np.save(p, np.full((2, D), np.nan, np.float32)), "NaN or inf"),
    "inf.npy": (lambda p: np.save(p, np.full((2, D), np.inf, np.float64)), "NaN or inf"),
    "ints.npy": (lambda p: np.save(p, np.ones((2, D), np.int64)), "not float16/32/64"),
    "pickled.npy": (_pickle, "allow_pickle"),
    "wide.npy": (lambda p: np.save(p, np.ones((2, D + 1), np.float32)), f"D = {D + 1}"),
    "junk.npy": (lambda p: p.write_bytes(b"not an array"), "junk.npy"),
}


def test_hostile_arrays_are_named_and_skipped(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    good = {f"ok{i}": np.full((2, D), i, np.float32) for i in range(3)}
    for vid, x in good.items():
        np.save(src / f"{vid}.npy", x)
    store = tmp_path / "s.h5"
    assert main(["import-features", str(src), "--out", str(store), "--name", "n"]) == 0
    capsys.readouterr()
    before = {v: FeatureStore(store).features(v).tobytes() for v in good}
    for name, (write, _) in HOSTILE.items():
        write(src / name)
    np.save(src / "dup.npy", np.ones((2, D), np.float32))
    np.save(src / "dup.avi.npy", np.ones((2, D), np.float32))
    np.save(src / ".hidden.npy", np.ones((2, D), np.float32))
    np.save(src / "fine.npy", np.ones((4, D), np.float32))
    rc = main(["import-features", str(src), "--out", str(store), "--name", "n"])
    err = capsys.readouterr().err
    assert rc == 1
    for name, (_, needle) in HOSTILE.items():
        line = next(l for l in err.splitlines() if f"refused: {file_id(name)}:" in l)
        assert needle in line, line
    assert "several files give the id 'dup'" in err and "starts with a dot" in err
    st = FeatureStore(store)
    assert st.ids == sorted([*good, "fine"])  # the good new one imported, the old ones untouched
    assert {v: st.features(v).tobytes() for v in good} == before
    assert set(st.failed) == {file_id(n) for n in HOSTILE} | {"dup"}
    assert "allow_pickle" in st.failed["pickled"]["reason"]
    one_line(capsys, ["import-features", src, "--out", store, "--name", "other"], 2, "imported:other")
    (tmp_path / "notes.h5").write_text("mine")
    one_line(capsys, ["import-features", src, "--out", tmp_path / "notes.h5", "--name", "n"], 2, "--overwrite")
    one_line(capsys, ["import-features", tmp_path / "nowhere", "--out", tmp_path / "x.h5", "--name", "n"], 2, "no such")


def _hand_made(path, sig, failed=True, features=True):
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["version"], f.attrs["signature"] = "s2vt-features", 1, json.dumps(sig)
        g = f.create_group("videos").create_group("vid1")
        if features:
            g["features"] = np.ones((3, 4), np.float32)
        g["frame_indices"] = np.arange(3)
        if failed:
            f.create_group("failed")


def test_hand_made_stores_work_or_name_what_is_missing(msvd_dir, tmp_path, capsys):
    from s2vt.runtime.errors import S2VTError
    from s2vt.features.signature import check_complete

    minimal = {"format_version": 1, "stream": "rgb", "backbone": "imported:mine", "dim": 4}
    _hand_made(tmp_path / "ok.h5", minimal)
    assert FeatureStore(tmp_path / "ok.h5").features("vid1").shape == (3, 4)
    check_complete(minimal, "ok.h5")
    for i, (kw, dim, needle) in enumerate([({"failed": False}, 4, "no /failed group"), ({}, 5, "not (T >= 1, 5)"),
                                           ({"features": False}, 4, "no 'features' dataset")]):
        p = tmp_path / f"bad{i}.h5"
        _hand_made(p, {**minimal, "dim": dim}, **kw)
        with pytest.raises(S2VTError) as e:
            FeatureStore(p)
        assert needle in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)
    full = {**minimal, "backbone": "efficientnet_lite0", "layer": "pool", "weights_digest": "0" * 16,
            "preprocess": {"size": 224, "crop_ratio": 0.875, "mean": [0.5] * 3, "std": [0.5] * 3}, "precision": "fp32"}
    for sig, needle in [({**minimal, "backbone": "resnet152"}, "no 'layer' key"),
                        ({k: v for k, v in minimal.items() if k != "dim"}, "no 'dim' key"),
                        ({**minimal, "dim": "4"}, "'dim' must be an integer"), (full, "no 'sampling' key"),
                        ({**full, "sampling": {"stride": 10}}, "'sampling' has no 'num_frames' key")]:
        with pytest.raises(S2VTError, match=needle):
            check_complete(sig, "x.h5")
    _hand_made(tmp_path / "nosampling.h5", full)  # opens, but training refuses before it starts
    one_line(capsys, ["train", "--dataset", "msvd", "--annotations", msvd_dir, "--features", tmp_path / "nosampling.h5",
                      "--out", tmp_path / "run"], 2, "nosampling.h5", "no 'sampling' key")
    assert not (tmp_path / "run").exists()


def test_caption_with_a_stand_in_backbone_for_imported_features(tiny_features, tmp_path, capsys):
    """A model trained on imported features captions a raw video when --cnn names a backbone of the
    recorded width; --cnn is refused for a model whose features record their backbone."""
    root, stores = tiny_features
    npy, store, run = tmp_path / "npy", tmp_path / "imported.h5", tmp_path / "run"
    assert main(["export-features", str(stores["rgb"]), "--out", str(npy)]) == 0
    assert main(["import-features", str(npy), "--out", str(store), "--name", "lite0-elsewhere"]) == 0
    assert main(["train", "--dataset", "synthetic", "--annotations", str(root), "--features", str(store), "--out",
                 str(run), "--max-steps", "2", "--batch-size", "4", "--no-val-meteor", "--embed", "8", "--hidden", "8",
                 "--quiet"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    video = sorted((root / "videos").iterdir())[0]
    said = ("caption computes efficientnet_lite0 pool features of one frame in every 10, the model's first 80 "
            "(opencv resize to a 256-pixel short side, centre crop 224); the features imported as 'lite0-elsewhere' "
            "record no backbone, sampling or preprocessing")
    one_line(capsys, ["caption", video, "--checkpoint", run / "best.pt", "--cnn", "efficientnet_lite0"], 2, said,
             "pass --accept-different-features to caption with them anyway")
    with pytest.warns(UserWarning) as warned:
        assert main(["caption", str(video), "--checkpoint", str(run / "best.pt"), "--cnn", "efficientnet_lite0",
                     "--accept-different-features", "--json"]) == 0
    assert [said in str(w.message) and "\n" not in str(w.message) for w in warned] == [True]
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["video"] == str(video) and isinstance(rec["caption"], str)
    one_line(capsys, ["caption", video, "--checkpoint", run / "best.pt", "--accept-different-features"], 2,
             "--accept-different-features goes with --cnn")
    extracted_run = tmp_path / "run2"
    assert main(["train", "--dataset", "synthetic", "--annotations", str(root), "--features", str(stores["rgb"]),
                 "--out", str(extracted_run), "--max-steps", "1", "--batch-size", "4", "--no-val-meteor", "--embed",
                 "8", "--hidden", "8", "--quiet"]) == 0
    capsys.readouterr()
    one_line(capsys, ["caption", video, "--checkpoint", extracted_run / "best.pt", "--cnn", "timm:resnet18"], 2,
             "--cnn is for models trained on imported features")
