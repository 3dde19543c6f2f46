"""MSR-VTT and VATEX loaders on small files in the official formats, their errors, and the
one video-id rule across every loader."""
import json
import os

import pytest

import s2vt.data.corpora as ds
from s2vt.cli.app import main
from s2vt.data.corpora import load_corpus
from s2vt.runtime.errors import DataError, S2VTError


def _video(vid, split):
    return {"category": 3, "url": f"https://www.youtube.com/watch?v={vid}", "video_id": vid,
            "start time": 1.0, "end time": 11.0, "split": split, "id": int(vid[5:])}


def _sentences(pairs):
    return [{"caption": c, "video_id": v, "sen_id": i} for i, (v, c) in enumerate(pairs)]


TRAIN_VAL = {
    "info": {"year": 2016},
    "videos": [_video("video0", "train"), _video("video1", "train"), _video("video2", "validate"),
               _video("video3", "train")],  # video3 has no caption
    "sentences": _sentences([("video0", "a man is cooking"), ("video0", "someone cooks food"),
                             ("video1", "a cat plays"), ("video0", "a chef  prepares a meal"),
                             ("video1", "   "),  # empty caption
                             ("video2", "a car drives"), ("video2", "a red car on a road"),
                             ("video99", "no such video")]),  # caption of an unknown video
}
TEST = {"videos": [_video("video10", "test"), _video("video11", "test")],
        "sentences": _sentences([("video10", "a dog runs"), ("video11", "people dance"),
                                 ("video10", "a dog is running"), ("video11", "a group dances"),
                                 ("video10", "a brown dog runs on grass")])}
MSRVTT_STATS = {"train": {"videos": 2, "captions": 4}, "val": {"videos": 1, "captions": 2},
                "test": {"videos": 2, "captions": 5}}
MSRVTT_SKIPPED = {"empty caption": 1, "caption of an unknown video": 1, "video without captions": 1}


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=1))
    return path


def _msrvtt(root, train_val=TRAIN_VAL, test=TEST):
    """train_val one folder down (annotations/), test at the top: both places are accepted."""
    _write(root / "annotations" / "train_val_videodatainfo.json", train_val)
    _write(root / "test_videodatainfo.json", test)
    return root


def test_msrvtt_counts_and_skips(tmp_path):
    c = load_corpus("msrvtt", _msrvtt(tmp_path))
    assert c.stats()["splits"] == MSRVTT_STATS
    assert c.skipped == MSRVTT_SKIPPED
    assert c.splits == {"train": ["video0", "video1"], "val": ["video2"], "test": ["video10", "video11"]}
    assert c.captions["video0"] == ["a man is cooking", "someone cooks food", "a chef prepares a meal"]


def test_msrvtt_video_paths_index_once(tmp_path, monkeypatch):
    root = _msrvtt(tmp_path)
    _write(root / "TrainValVideo" / "video0.mp4", "x")
    _write(root / "elsewhere" / "deep" / "video10.mp4", "x")
    calls = []
    real = ds.index_videos
    monkeypatch.setattr(ds, "index_videos", lambda r: calls.append(r) or real(r))
    c = load_corpus("msrvtt", root)
    assert c.video_path("video0") == root / "TrainValVideo" / "video0.mp4"
    assert calls == []  # the standard place needs no scan
    assert c.video_path("video10") == root / "elsewhere" / "deep" / "video10.mp4"
    assert c.video_path("video11") == root / "TestVideo" / "video11.mp4"  # nowhere: the standard place
    assert c.video_path("video2") == root / "TrainValVideo" / "video2.mp4"
    assert calls == [root]  # one scan for all misses


def test_msrvtt_cli_dataset_info(tmp_path, capsys):
    root = _msrvtt(tmp_path)
    assert main(["dataset-info", "msrvtt", "--root", str(root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"dataset": "msrvtt", "root": str(root), "splits": MSRVTT_STATS, "skipped": MSRVTT_SKIPPED}


def test_msrvtt_cli_malformed_file_is_one_line(tmp_path, capsys):
    root = _msrvtt(tmp_path, train_val='{"videos": [\n  {"video_id": "video0",}\n]}')
    assert main(["dataset-info", "msrvtt", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "train_val_videodatainfo.json:2:" in err and "malformed JSON (line 2, column" in err


def _edit(doc, fn):
    doc = json.loads(json.dumps(doc))
    fn(doc)
    return doc


@pytest.mark.parametrize("train_val,test,msg", [
    ('{"videos": [}', TEST, r"train_val_videodatainfo.json:1:13: malformed JSON \(line 1, column 13\)"),
    ([], TEST, r"train_val_videodatainfo.json: the top level must be an object .*found a list"),
    (_edit(TRAIN_VAL, lambda d: d.pop("videos")), TEST, r"train_val_videodatainfo.json: missing field 'videos'"),
    (TRAIN_VAL, _edit(TEST, lambda d: d.pop("sentences")), r"test_videodatainfo.json: missing field 'sentences'"),
    (_edit(TRAIN_VAL, lambda d: d.update(sentences={})), TEST, r"videodatainfo.json:sentences: expected a list"),
    (_edit(TRAIN_VAL, lambda d: d["videos"][1].pop("video_id")), TEST,
     r"train_val_videodatainfo.json:videos\[1\]: missing field 'video_id'"),
    (_edit(TRAIN_VAL, lambda d: d["videos"][2].pop("split")), TEST, r":videos\[2\]: missing field 'split'"),
    (_edit(TRAIN_VAL, lambda d: d["videos"].__setitem__(0, "video0")), TEST,
     r":videos\[0\]: expected an object, found text"),
    (_edit(TRAIN_VAL, lambda d: d["videos"][0].update(video_id=7)), TEST,
     r":videos\[0\].video_id: expected text, found a number"),
    (_edit(TRAIN_VAL, lambda d: d["videos"][3].update(split="training")), TEST,
     r"train_val_videodatainfo.json:videos\[3\].split: unknown split 'training' \(expected train, validate or test\)"),
    (_edit(TRAIN_VAL, lambda d: d["sentences"][2].update(caption=["a", "b"])), TEST,
     r"train_val_videodatainfo.json:sentences\[2\].caption: expected text, found a list"),
    (_edit(TRAIN_VAL, lambda d: d["sentences"][4].pop("caption")), TEST, r":sentences\[4\]: missing field 'caption'"),
    (TRAIN_VAL, _edit(TEST, lambda d: d["videos"].append(_video("video1", "test"))),
     r"test_videodatainfo.json:videos\[2\].video_id: duplicate video id 'video1' "
     r"\(first at train_val_videodatainfo.json:videos\[1\]\)"),
])
def test_msrvtt_bad_files(tmp_path, train_val, test, msg):
    with pytest.raises(DataError, match=msg):
        load_corpus("msrvtt", _msrvtt(tmp_path, train_val, test))


def test_msrvtt_missing_bad_utf8_and_duplicate_files(tmp_path):
    root = _msrvtt(tmp_path)
    (root / "test_videodatainfo.json").unlink()
    with pytest.raises(DataError, match=r"test_videodatainfo.json is neither here nor one folder below"):
        load_corpus("msrvtt", root)
    (root / "test_videodatainfo.json").write_bytes(b'{"videos": ["\xff"]}')
    with pytest.raises(DataError, match=r"test_videodatainfo.json: not valid UTF-8"):
        load_corpus("msrvtt", root)
    _write(root / "test_videodatainfo.json", TEST)
    _write(root / "copy" / "test_videodatainfo.json", TEST)
    with pytest.raises(DataError, match=r"several files match test_videodatainfo.json: copy/test_videodatainfo.json, "
                                        r"test_videodatainfo.json; keep one"):
        load_corpus("msrvtt", root)


# ----------------------------------------------------------------------------- VATEX

def _vx(vid, en, zh=("一个人",)):
    return {"videoID": vid, "enCap": list(en), "chCap": list(zh)}


VX_TRAIN = [_vx("Ptf_2VRj-V0_000122_000132", ["A man plays a guitar.", "Someone strums a guitar", "a man sings"]),
            _vx("abc_000001_000011", ["A dog runs.", "  "]),  # one empty caption
            _vx("nocap_000000_000010", [])]  # no caption at all
VX_VAL = [_vx("val-1_000010_000020", ["A woman cooks.", "A person makes food."])]
VX_TEST = [_vx("tst_000000_000010", ["Kids play."], zh=()), _vx("tst2_000005_000015", ["A bird flies."])]


def _vatex(root, train=VX_TRAIN, val=VX_VAL, test=VX_TEST, test_name="vatex_public_test_english_v1.1.json"):
    _write(root / "vatex_training_v1.0.json", train)
    _write(root / "annotations" / "vatex_validation_v1.0.json", val)
    if test is not None:
        _write(root / test_name, test)
    return root


def test_vatex_counts_and_skips(tmp_path):
    c = load_corpus("vatex", _vatex(tmp_path))
    assert c.stats()["splits"] == {"train": {"videos": 2, "captions": 4}, "val": {"videos": 1, "captions": 2},
                                   "test": {"videos": 2, "captions": 2}}
    assert c.skipped == {"empty caption": 1, "video without captions": 1}
    assert c.captions["abc_000001_000011"] == ["A dog runs."]


def test_vatex_test_file_names_and_missing_test(tmp_path):
    c = load_corpus("vatex", _vatex(tmp_path / "a", test_name="vatex_test_v1.0.json"))
    assert len(c.splits["test"]) == 2
    c = load_corpus("vatex", _vatex(tmp_path / "b", test=None))
    assert c.stats()["splits"]["test"] == {"videos": 0, "captions": 0}
    assert c.skipped == {"empty caption": 1, "video without captions": 1,
                         "test split empty: no vatex_public_test_english_v*.json or vatex_test_v*.json file": 1}
    (tmp_path / "b" / "vatex_training_v1.0.json").unlink()
    with pytest.raises(DataError, match=r"VATEX train annotation file vatex_training_v\*.json is neither here"):
        load_corpus("vatex", tmp_path / "b")


def test_vatex_video_paths_anywhere_under_root(tmp_path):
    root = _vatex(tmp_path / "root")
    _write(root / "clips" / "part1" / "Ptf_2VRj-V0_000122_000132.mp4", "x")
    outside = tmp_path / "disk2"
    _write(outside / "val-1_000010_000020.mp4", "x")
    os.symlink(outside, root / "linked", target_is_directory=True)
    os.symlink(root, root / "clips" / "loop", target_is_directory=True)  # a cycle is walked once
    c = load_corpus("vatex", root)
    assert c.video_path("Ptf_2VRj-V0_000122_000132") == root / "clips" / "part1" / "Ptf_2VRj-V0_000122_000132.mp4"
    assert c.video_path("val-1_000010_000020") == root / "linked" / "val-1_000010_000020.mp4"
    assert c.video_path("abc_000001_000011") == root / "videos" / "abc_000001_000011.mp4"


@pytest.mark.parametrize("train,msg", [
    ('[{"videoID": "a", "enCap": ["x"]}\n{"videoID": "b"}]', r"vatex_training_v1.0.json:2:1: malformed JSON"),
    ({"videos": VX_TRAIN}, r"vatex_training_v1.0.json: the top level must be a list .*found an object"),
    ([{"enCap": ["x"]}], r"vatex_training_v1.0.json:\[0\]: missing field 'videoID'"),
    ([_vx("a", ["x"]), {"videoID": "b"}], r"vatex_training_v1.0.json:\[1\]: missing field 'enCap'"),
    ([{"videoID": "a", "enCap": "a man plays"}], r":\[0\].enCap: expected a list, found text"),
    ([_vx("a", ["ok", None])], r"vatex_training_v1.0.json:\[0\].enCap\[1\]: a caption must be text, found null"),
    ([_vx("a", ["ok"]), _vx("a", ["again"])],
     r":\[1\].videoID: duplicate video id 'a' \(first at vatex_training_v1.0.json:\[0\]\)"),
    ([_vx("val-1_000010_000020", ["in train and val"])], r"vatex_validation_v1.0.json:\[0\].videoID: duplicate"),
    (["abc"], r":\[0\]: expected an object, found text"),
])
def test_vatex_bad_files(tmp_path, train, msg):
    with pytest.raises(DataError, match=msg):
        load_corpus("vatex", _vatex(tmp_path, train=train))


def test_vatex_cli_dataset_info(tmp_path, capsys):
    assert main(["dataset-info", "vatex", "--root", str(_vatex(tmp_path))]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["splits"]["train"] == {"videos": 2, "captions": 4} and st["skipped"]["video without captions"] == 1


# ----------------------------------------------------------------------------- the id rule, every format

PROBLEM = {"../x": "contains a path separator", "a/b": "contains a path separator", "": "the video id is empty",
           ".": "starts with a dot", ".hidden": "starts with a dot"}
TS = "\t00.00.01.000\t00.00.02.000\t00.00.01.000\t00.00.02.000\tHi"


def _msvd_sents(root, bad):
    (root / "youtube_mapping.txt").write_text("abc_1_5 vid1\n")
    for s in ("train", "val", "test"):
        (root / f"sents_{s}_lc_nopunc.txt").write_text("vid1\tok\n" if s != "train" else f"vid1\tok\n{bad}\thi\n")
    return "sents_train_lc_nopunc.txt", "2"


def _msvd_mapping(root, bad):
    (root / "youtube_mapping.txt").write_text(f"abc_1_5 vid1\n{bad} vid2\n")
    return "youtube_mapping.txt", "2"


def _mvad(root, bad):
    for name in ("training", "val", "test"):
        (root / f"LSMDC16_annos_{name}.csv").write_text(f"3001_A_00.00.01.000-00.00.02.000{TS}\n{bad}{TS}\n")
    return "LSMDC16_annos_training.csv", "2"


def _generic_caps(root, bad):
    (root / "captions.tsv").write_text(f"a\tok\n{bad}\thi\n")
    return "captions.tsv", "2"


def _generic_list(root, bad):
    (root / "captions.tsv").write_text("a\tok\n")
    for s in ("train", "val", "test"):
        (root / f"{s}.txt").write_text(f"a\n{bad}\n")
    return "train.txt", "2"


def _msrvtt_video(root, bad):
    _msrvtt(root, _edit(TRAIN_VAL, lambda d: d["videos"][1].update(video_id=bad)))
    return "train_val_videodatainfo.json", r"videos\[1\].video_id"


def _msrvtt_sentence(root, bad):
    _msrvtt(root, test=_edit(TEST, lambda d: d["sentences"][3].update(video_id=bad)))
    return "test_videodatainfo.json", r"sentences\[3\].video_id"


def _vatex_id(root, bad):
    _vatex(root, val=[_vx("ok_000000_000010", ["fine"]), _vx(bad, ["x"])])
    return "vatex_validation_v1.0.json", r"\[1\].videoID"


FORMATS = {"msvd": [_msvd_sents, _msvd_mapping], "mvad": [_mvad], "generic": [_generic_caps, _generic_list],
           "msrvtt": [_msrvtt_video, _msrvtt_sentence], "vatex": [_vatex_id]}
CASES = [(name, make, bad) for name, makers in FORMATS.items() for make in makers for bad in PROBLEM
         # whitespace-separated mapping lines and one-id-per-line lists cannot hold an empty id
         if not (bad == "" and make in (_msvd_mapping, _generic_list))]


@pytest.mark.parametrize("name,make,bad", CASES, ids=[f"{m.__name__}-{b or 'empty'}" for _, m, b in CASES])
def test_hostile_ids_refused_with_file_and_place(tmp_path, name, make, bad):
    fname, place = make(tmp_path, bad)
    with pytest.raises(DataError, match=rf"{fname}:{place}: (video id {bad!r} )?{PROBLEM[bad]} \(ids may not"):
        load_corpus(name, tmp_path)


def test_video_path_refuses_hostile_ids(tmp_path):
    c = load_corpus("msrvtt", _msrvtt(tmp_path))
    for bad in PROBLEM:
        with pytest.raises(S2VTError, match=PROBLEM[bad]):
            c.video_path(bad)


def test_ids_with_spaces_and_inner_dots_are_allowed(tmp_path):
    c = load_corpus("vatex", _vatex(tmp_path, val=[_vx("clip 1.part_2", ["a caption"])]))
    assert c.splits["val"] == ["clip 1.part_2"]
    assert c.video_path("clip 1.part_2") == tmp_path / "videos" / "clip 1.part_2.mp4"
