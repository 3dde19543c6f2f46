import json

import pytest

from s2vt.data.corpora import load_corpus, msvd_split_of
from s2vt.runtime.errors import DataError, S2VTError
from commands import s2vt_in_process


def test_msvd_counts_on_real_files(msvd_dir):
    st = load_corpus("msvd", msvd_dir).stats()["splits"]
    assert st == {"train": {"videos": 1200, "captions": 48774}, "val": {"videos": 100, "captions": 4290},
                  "test": {"videos": 670, "captions": 27763}}


def test_msvd_video_path_and_split(msvd_dir):
    c = load_corpus("msvd", msvd_dir)
    assert c.video_path("vid1").name == "-4wsuPCjDBc_5_15.avi"
    assert c.video_path("vid1").parent.name == "YouTubeClips"
    assert c.splits["train"][0] == "vid1" and c.splits["test"][-1] == "vid1970"
    assert msvd_split_of("vid1200") == "train" and msvd_split_of("vid1201") == "val" and msvd_split_of("vid1301") == "test"


def test_dataset_info_cli_prints_msvd_counts(msvd_dir):
    r = s2vt_in_process("dataset-info", "msvd", "--root", msvd_dir)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    st = json.loads(out)["splits"]
    assert (st["train"]["videos"], st["train"]["captions"]) == (1200, 48774)
    assert (st["val"]["videos"], st["val"]["captions"]) == (100, 4290)
    assert (st["test"]["videos"], st["test"]["captions"]) == (670, 27763)


def _video_corpus(tmp_path, rows):
    (tmp_path / "youtube_mapping.txt").write_text("abc_1_5 vid1\nxyz_2_9 vid1250\nqqq_0_4 vid1400\n")
    head = "VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description\n"
    (tmp_path / "video_corpus.csv").write_text(head + "".join(r + "\n" for r in rows))
    return tmp_path


def test_msvd_from_video_corpus_csv(tmp_path):
    root = _video_corpus(tmp_path, [
        "abc,1,5,1,clean,10,English,A man is cooking.",
        "abc,1,5,2,clean,10,English,\"Someone cooks, happily\"",
        "abc,1,5,3,clean,10,German,Ein Mann kocht",
        "xyz,2,9,4,clean,10,English,a cat plays",
        "qqq,0,4,5,clean,10,English,a dog runs",
        "zzz,0,4,5,clean,10,English,not in mapping",
    ])
    c = load_corpus("msvd", root)
    assert c.captions["vid1"] == ["A man is cooking.", "Someone cooks, happily"]
    assert c.splits == {"train": ["vid1"], "val": ["vid1250"], "test": ["vid1400"]}
    assert c.skipped["non-English row"] == 1 and c.skipped["clip not in youtube_mapping.txt"] == 1
    assert c.video_path("vid1250").name == "xyz_2_9.avi"


def test_video_corpus_bad_rows(tmp_path):
    root = _video_corpus(tmp_path, ["abc,1,5,1,clean,10,English"])
    with pytest.raises(DataError, match=r"video_corpus.csv:2: expected 8"):
        load_corpus("msvd", root)
    root = _video_corpus(tmp_path, ["abc,x,5,1,clean,10,English,hi"])
    with pytest.raises(DataError, match=r":2: Start/End must be integers"):
        load_corpus("msvd", root)


LSMDC = [
    "3001_21_JUMP_STREET_00.00.32.170-00.00.34.049\t00.00.32.170\t00.00.34.049\t00.00.32.000\t00.00.34.100\tSomeone runs.",
    "3001_21_JUMP_STREET_00.01.00.000-00.01.02.000\t00.01.00.000\t00.01.02.000\t00.01.00.000\t00.01.02.000\tHe looks at her.",
    "0001_AMERICAN_BEAUTY_00.00.01.000-00.00.02.000\t00.00.01.000\t00.00.02.000\t00.00.01.000\t00.00.02.000\tMPII clip.",
]


def _lsmdc(tmp_path, train_lines, val_lines=None, test_lines=None):
    for name, lines in (("training", train_lines), ("val", val_lines or [LSMDC[1].replace("00.01.0", "00.02.0")]),
                        ("test", test_lines or [LSMDC[1].replace("00.01.0", "00.03.0")])):
        (tmp_path / f"LSMDC16_annos_{name}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_mvad_lsmdc_format(tmp_path):
    c = load_corpus("mvad", _lsmdc(tmp_path, LSMDC))
    assert c.splits["train"] == [LSMDC[0].split("\t")[0], LSMDC[1].split("\t")[0]]
    assert c.skipped["not an M-VAD clip (id does not start with 3)"] == 1
    vid = c.splits["train"][0]
    assert c.video_path(vid) == tmp_path / "3001_21_JUMP_STREET" / f"{vid}.avi"
    assert c.captions[vid] == ["Someone runs."]


@pytest.mark.parametrize("line,msg", [
    ("3001_X_00.00.01.000-00.00.02.000\t00.00.01.000\t00.00.02.000\tSomeone", "expected 6"),
    ("3001_X_00.00.01.000-00.00.02.000\t00.00.01\t00.00.02.000\t00.00.01.000\t00.00.02.000\tHi", "bad timestamp"),
    ("3001_X_00.00.01.000-00.00.02.000\t00.00.05.000\t00.00.02.000\t00.00.01.000\t00.00.02.000\tHi", "start time is after"),
    ("../../etc/passwd\t00.00.01.000\t00.00.02.000\t00.00.01.000\t00.00.02.000\tHi", "contains a path separator"),
])
def test_mvad_bad_lines(tmp_path, line, msg):
    with pytest.raises(DataError, match=r"LSMDC16_annos_training.csv:1: .*" + msg):
        load_corpus("mvad", _lsmdc(tmp_path, [line]))


def _generic(tmp_path, captions: bytes, train=b"a\n", val=b"b\n", test=b"c\n"):
    (tmp_path / "captions.tsv").write_bytes(captions)
    for n, b in (("train", train), ("val", val), ("test", test)):
        (tmp_path / f"{n}.txt").write_bytes(b)
    return tmp_path


def test_generic_format_and_skips(tmp_path):
    c = load_corpus("generic", _generic(tmp_path, b"a\tone cap\na\t  \nb\tx\nc\ty\nd\torphan\n"))
    assert c.captions["a"] == ["one cap"]
    assert c.skipped == {"empty caption": 1, "captioned video in no split": 1}
    assert c.stats()["splits"]["train"] == {"videos": 1, "captions": 1}


@pytest.mark.parametrize("caps,train,msg", [
    (b"a\tok\na\tbad\tthird\n", b"a\n", r"captions.tsv:2: expected 2"),
    (b"a\tok\nb\t\xff\xfe bad\n", b"a\n", r"captions.tsv:2: not valid UTF-8"),
    (b"a/b\tok\n", b"a/b\n", r"captions.tsv:1: video id 'a/b' contains a path separator"),
    (b"..\tok\n", b"..\n", r"captions.tsv:1: video id '..' starts with a dot"),
    (b"a\tok\nb\tok\nc\tok\n", b"a\n.hidden\n", r"train.txt:2: video id '.hidden' starts with a dot"),
    (b"a\tok\nb\tok\nc\tok\n", b"a\na\n", r"train.txt:2: duplicate video id"),
    (b"a\tok\nb\tok\nc\tok\n", b"zz\n", r"train.txt:1: video id 'zz': it has no caption in captions.tsv"),
    (b"a\tok\nb\tok\nc\tok\nzz\t   \nzz\t\n", b"zz\n",
     r"train.txt:1: video id 'zz': its only captions in .*captions.tsv are empty \(first at line 4\)"),
])
def test_generic_bad_input(tmp_path, caps, train, msg):
    with pytest.raises(DataError, match=msg):
        load_corpus("generic", _generic(tmp_path, caps, train))


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(S2VTError, match="unknown dataset 'youtube2'"):
        load_corpus("youtube2", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_corpus("msvd", tmp_path / "nope")


def test_cli_bad_input_is_one_line_not_traceback(tmp_path):
    root = _generic(tmp_path, b"a\tok\nb\t\xff\n")
    r = s2vt_in_process("dataset-info", "generic", "--root", root)
    assert r.returncode == 2
    assert "captions.tsv:2" in r.stderr and "Traceback" not in r.stderr
