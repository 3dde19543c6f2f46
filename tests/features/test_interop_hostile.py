"""import-features and export-features on hostile sources and outputs: every bad file is named and
skipped (exit 1), a run that must change is one line (exit 2), and no file the command does not own
changes."""
import errno
import io
import os
import socket
import sys
import zipfile

import h5py
import numpy as np
import pytest

from s2vt.cli.app import main
from s2vt.features import arrayfiles
from s2vt.features.interop import MANIFEST, import_signature
from s2vt.features.store import FeatureStore, FeatureWriter, stage_dir

D = 4
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, sockets, /dev/zero")


def run(capsys, *argv):
    """(exit status, stdout, stderr) of one command."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return rc, out, err


def refused(err: str) -> dict:
    """{id or file name: reason} of the 'refused:' lines an import writes on stderr."""
    return dict(line.split("refused: ", 1)[1].split(": ", 1) for line in err.splitlines() if "refused: " in line)


def npy_bytes(descr, shape, data=b"", fortran=False) -> bytes:
    """An .npy file whose header says ``descr`` and ``shape``, followed by ``data`` (whatever its size)."""
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return b.getvalue() + data


def raw_header(text: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def zip_of(path, **members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def snapshot(folder) -> dict:
    """{path: bytes} of every file under ``folder`` (links not followed)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in files:
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                out[p] = open(p, "rb").read()
    return out


def good(src, *names, rows=2, value=1.0):
    src.mkdir(exist_ok=True)
    for n in names:
        np.save(src / f"{n}.npy", np.full((rows, D), value, np.float32))


NPY = {  # file name -> (its bytes, what the refusal says)
    "token.npy": (raw_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, \n"), "header is not valid"),
    "notdict.npy": (raw_header(b"[1, 2, 3]" + b" " * 54 + b"\n"), "header is not valid"),
    "negative.npy": (npy_bytes("<f4", (-1, D), b"\0" * 64), "negative size"),
    "huge.npy": (npy_bytes("<f4", (10 ** 12, D), b"\0" * 64), "more than the 4 GiB"),
    "short.npy": (npy_bytes("<f4", (100, D), b"\0" * 32), "truncated: its header promises 1600 bytes"),
    "structured.npy": (npy_bytes([("a", "<f4"), ("b", "<f4")], (2, D), b"\0" * 64), "structured dtype"),
    "objects.npy": (npy_bytes("|O", (2, D), b"\0" * 64), "allow_pickle"),
    "text.npy": (b"hello, these are\nnot numbers\n", "not an .npy array: text"),
    "random.npy": (np.random.default_rng(3).bytes(256), "not an .npy array: not an array file"),
    "hdf5.npy": (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "not an .npy array: an HDF5 file"),
    "zipped.npy": (b"PK\x03\x04" + b"\0" * 100, "not an .npy array: a zip archive"),
}


def test_npy_headers_are_checked_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    good(src, "ok")
    np.save(src / "fortran.npy", np.asfortranarray(np.arange(8, dtype=np.float32).reshape(2, D)))
    np.save(src / "bigendian.npy", np.arange(8, dtype=">f8").reshape(2, D))
    for name, (data, _) in NPY.items():
        (src / name).write_bytes(data)
    read, read_data = [], arrayfiles._read_data
    monkeypatch.setattr(arrayfiles, "_read_data", lambda f, info: read.append(info.shape) or read_data(f, info))
    rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
    assert rc == 1 and read == [(2, D)] * 3  # only the three good arrays were read past their headers
    why = refused(err)
    assert set(why) == {n[:-4] for n in NPY}
    for name, (_, needle) in NPY.items():
        assert needle in why[name[:-4]] and why[name[:-4]].startswith(name), why[name[:-4]]
    assert not any("pickle" in why[n] for n in ("text", "random", "hdf5", "zipped"))
    st = FeatureStore(tmp_path / "o.h5")
    assert st.ids == ["bigendian", "fortran", "ok"] and set(st.failed) == {n[:-4] for n in NPY}
    assert st.features("fortran").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert st.features("bigendian").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_npz_members_are_checked_inside_the_zip(tmp_path, capsys):
    src = tmp_path / "src"
    good(src, "ok")
    zip_of(src / "bomb.npz", **{"features.npy": npy_bytes("<f4", (32 * 10 ** 9, D))})  # 477 GiB promised
    zip_of(src / "short.npz", **{"features.npy": npy_bytes("<f4", (100, D), b"\0" * 32)})
    zip_of(src / "text.npz", **{"notes.txt": "hello"})
    zip_of(src / "nested.npz", **{"inner.zip": (src / "text.npz").read_bytes()})
    zip_of(src / "two.npz", **{"a.npy": npy_bytes("<f4", (2, D), b"\0" * 32), "b.npy": b"x"})
    zip_of(src / "empty.npz")
    with open(src / "named.npz", "wb") as f:  # np.savez adds nothing to a file object's name
        np.savez(f, features=np.ones((3, D)), other=np.ones(2))
    (src / "cut.npz").write_bytes((src / "named.npz").read_bytes()[:200])
    (src / "garbage.npz").write_bytes(b"PK\x03\x04" + b"\1" * 100)
    np.save(src / "plain.npy", np.ones((2, D)))
    os.rename(src / "plain.npy", src / "plain.npz")
    rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
    why = refused(err)
    assert rc == 1 and set(why) == {"bomb", "short", "text", "nested", "two", "empty", "cut", "garbage", "plain"}
    assert "(32000000000, 4) of float32 takes 477 GiB" in why["bomb"] and "truncated" in why["short"]
    assert "member 'notes.txt' is not an .npy array" in why["text"] and "'inner.zip' is not" in why["nested"]
    assert "holds 2 arrays and none named 'features'" in why["two"] and "an empty .npz" in why["empty"]
    assert "damaged or truncated zip" in why["cut"] and "damaged or truncated zip" in why["garbage"]
    assert "not an .npz (zip) archive: an .npy array" in why["plain"]
    st = FeatureStore(tmp_path / "o.h5")
    assert st.ids == ["named", "ok"] and st.features("named").shape == (3, D)


def test_hdf5_entries_are_checked_for_kind_dtype_rank_and_size(tmp_path, capsys):
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["ok"] = np.ones((2, D), np.float32)
        f.create_group("grouped")["features"] = np.ones((3, D), np.float64)
        f["compound"] = np.zeros(2, dtype=[("a", "f4"), ("b", "f4")])
        f["named_type"] = np.dtype("f4")
        f["soft"] = h5py.SoftLink("/nowhere")
        f["external"] = h5py.ExternalLink("missing.h5", "/x")
        f["string"] = "hello"
        f["empty"] = h5py.Empty("f4")
        f["scalar"] = np.float32(1)
        f["ints"] = np.ones((2, D), np.int32)
        f.create_dataset("tall", shape=(10 ** 12, 1), dtype="f4", chunks=(1024, 1))  # 3.6 TiB of nothing
        f.create_dataset("wide", shape=(10 ** 6, 10 ** 5), dtype="f4", chunks=(16, 1024))
        f.create_group("nofeatures")
    rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
    why = refused(err)
    assert rc == 1 and FeatureStore(tmp_path / "o.h5").ids == ["grouped", "ok"]
    expect = {"compound": "structured dtype", "named_type": "a named datatype",
              "soft": "a soft link to '/nowhere', which names nothing", "external": "an external link (to missing.h5:/x)", "string": "a string", "empty": "empty dataspace",
              "scalar": "not 2-D", "ints": "dtype int32 is not float16/32/64", "tall": "more than the 4 GiB",
              "wide": "more than the 4 GiB", "nofeatures": "a group with no 'features' dataset"}
    assert set(why) == set(expect)
    for vid, needle in expect.items():
        assert needle in why[vid], why[vid]


def test_values_beyond_float32_skip_that_file_only(tmp_path, capsys):
    src = tmp_path / "src"
    good(src, "a", "b")
    np.save(src / "big.npy", np.full((2, D), 4e38))
    rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
    assert rc == 1 and "beyond float32's range" in refused(err)["big"]
    assert FeatureStore(tmp_path / "o.h5").ids == ["a", "b"]


def test_nothing_importable_is_exit_2_and_writes_nothing(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "o.h5"
    src.mkdir()
    (src / "a.npy").write_bytes(NPY["token.npy"][0])
    rc, _, err = run(capsys, "import-features", src, "--out", out, "--name", "n")
    assert rc == 2 and "no array can be imported (e.g. a: a.npy: its .npy header" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["src"]
    (src / "a.npy").unlink()
    np.save(src / "nan.npy", np.full((2, D), np.nan, np.float32))  # headers pass, values fail as they are read
    rc, _, err = run(capsys, "import-features", src, "--out", out, "--name", "n")
    assert rc == 2 and "nan.npy: holds NaN or inf" in err and sorted(os.listdir(tmp_path)) == ["src"]


@linux
def test_entries_that_are_not_files_are_named(tmp_path, capsys):
    src = tmp_path / "src"
    good(src, "ok")
    os.mkfifo(src / "fifo.npy")
    (src / "folder.npy").mkdir()
    os.symlink("nowhere", src / "dangling.npy")
    os.symlink("looping.npy", src / "looping.npy")
    os.symlink("/dev/zero", src / "zero.npy")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock.npz"))
        rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
    finally:
        sock.close()
    assert rc == 1 and refused(err) == {
        "fifo": "fifo.npy: a FIFO (named pipe), not a regular file",
        "folder": "folder.npy: a folder, not a regular file",
        "dangling": "dangling.npy: a symbolic link to nothing", "looping": "looping.npy: a symbolic link loop",
        "zero": "zero.npy: a character device, not a regular file", "sock": "sock.npz: a socket, not a regular file"}
    assert FeatureStore(tmp_path / "o.h5").ids == ["ok"]


@linux
def test_a_source_that_is_not_a_folder_or_a_file_is_named(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    os.symlink("nowhere", tmp_path / "dangling")
    for src, needle in [(tmp_path / "fifo", "is a FIFO (named pipe): give a folder of .npy/.npz files or an HDF5 file"),
                        ("/dev/zero", "/dev/zero is a character device"),
                        (tmp_path / "dangling", "a symbolic link to nothing"), (tmp_path / "none", "no such folder")]:
        rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.h5").exists() and not stage_dir(tmp_path / "o.h5").exists()


def test_an_id_map_must_be_one_to_one(tmp_path, capsys):
    src = tmp_path / "src"
    good(src, "a", "b")
    for lines, needle in [("a x\nb x\n", "map.txt:2: video id 'x' is given to 'a' on line 1 and to 'b' here"),
                          ("a x\na y\n", "map.txt:2: 'a' is mapped to 'x' on line 1 and to 'y' here")]:
        (tmp_path / "map.txt").write_text(lines)
        rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n",
                         "--id-map", tmp_path / "map.txt")
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.h5").exists()
    (tmp_path / "map.txt").write_text("a x\na x\nb y\n")  # the same line twice says one thing
    assert run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n", "--id-map",
               tmp_path / "map.txt")[0] == 0 and FeatureStore(tmp_path / "o.h5").ids == ["x", "y"]


def test_names_that_are_not_utf8_are_shown_and_non_ascii_names_kept(tmp_path, capsys):
    src = tmp_path / "src"
    good(src, "ok")
    with open(os.path.join(os.fsencode(src), b"caf\xe9.npy"), "wb") as f:
        np.save(f, np.ones((2, D), np.float32))
    rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "résnet-Ω")
    assert rc == 1 and "refused: caf\\xe9.npy: video id 'caf\\udce9' is not UTF-8 text" in err
    st = FeatureStore(tmp_path / "o.h5")
    assert st.ids == ["ok"] and st.signature["backbone"] == "imported:résnet-Ω"
    rc, _, err = run(capsys, "import-features", src, "--out", tmp_path / "p.h5", "--name", os.fsdecode(b"r\xe9snet"))
    assert rc == 2 and "--name" in err and "not UTF-8" in err and not (tmp_path / "p.h5").exists()


def _store(path, ids, value=1.0):
    w = FeatureWriter(path, import_signature("old", "rgb", D))
    for vid in ids:
        w.add(vid, np.full((2, D), value, np.float32), np.arange(2), {"fps": 0.0})
    w.finalize()


def test_overwrite_replaces_the_store_only_once_the_new_one_is_complete(tmp_path, capsys):
    out, src, bad = tmp_path / "o.h5", tmp_path / "src", tmp_path / "bad"
    _store(out, ["old"])
    good(src, "a", rows=3)
    bad.mkdir()
    (bad / "x.npy").write_bytes(NPY["token.npy"][0])
    (tmp_path / "map.txt").write_text("a b\n")
    os.mkfifo(tmp_path / "fifo")
    cases = [([tmp_path / "none", "--out", out], "no such folder or file"),
             ([src, "--out", out, "--id-map", tmp_path / "nomap.txt"], "nomap.txt does not exist"),
             ([bad, "--out", out], "no array can be imported"),
             ([out, "--out", out], "is the source"),
             ([src, "--out", src / "a.npy"], "is inside the source folder"),
             ([src, "--out", src / "new.h5"], "is inside the source folder"),
             ([src, "--out", tmp_path / "map.txt", "--id-map", tmp_path / "map.txt"], "is the --id-map file"),
             ([src, "--out", tmp_path / "fifo"], "is a FIFO (named pipe); give the HDF5 file to write")]
    before, names = snapshot(tmp_path), sorted(os.listdir(tmp_path))
    for argv, needle in cases:
        rc, _, err = run(capsys, "import-features", *argv, "--name", "n", "--overwrite")
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == names  # nothing made or removed
    assert os.path.exists(tmp_path / "fifo") and FeatureStore(out).ids == ["old"]
    assert run(capsys, "import-features", src, "--out", out, "--name", "n", "--overwrite")[0] == 0
    st = FeatureStore(out)
    assert st.ids == ["a"] and st.signature["backbone"] == "imported:n" and not stage_dir(out).exists()


def test_a_run_holding_the_store_is_never_disturbed(tmp_path, capsys):
    """A second import into a store another run is writing is refused for that reason, with or without
    --overwrite, and nothing the first run staged is touched."""
    out, src = tmp_path / "o.h5", tmp_path / "src"
    good(src, "a")
    w = FeatureWriter(out, import_signature("n", "rgb", D), commit_videos=1)
    w.add("held", np.ones((2, D), np.float32), np.arange(2), {"fps": 0.0})  # committed: g000001.npz
    staged = snapshot(stage_dir(out))
    try:
        for extra in ([], ["--overwrite"]):
            rc, _, err = run(capsys, "import-features", src, "--out", out, "--name", "n", *extra)
            assert rc == 2 and "another run is writing" in err and "did not write" not in err, err
            assert snapshot(stage_dir(out)) == staged and not out.exists()
    finally:
        w.close()
    assert run(capsys, "import-features", src, "--out", out, "--name", "n")[0] == 0  # resumes what it staged
    assert FeatureStore(out).ids == ["a", "held"]


def test_an_output_that_cannot_be_made_is_named_not_its_lock(tmp_path, capsys, monkeypatch):
    ro, src = tmp_path / "ro", tmp_path / "src"
    ro.mkdir()
    good(src, "a")
    _store(tmp_path / "in.h5", ["v"])
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(path, *a, **k):  # a read-only folder, whoever runs the test
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", lambda p, flags, *a, **k: refuse(p) if str(p).startswith(str(ro))
                        and flags & os.O_CREAT else real_open(p, flags, *a, **k))
    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: refuse(p) if str(p).startswith(str(ro))
                        else real_mkdir(p, *a, **k))
    for argv, target in [(["merge-features", ro / "m.h5", tmp_path / "in.h5"], ro / "m.h5"),
                         (["import-features", src, "--out", ro / "o.h5", "--name", "n"], ro / "o.h5")]:
        rc, _, err = run(capsys, *argv)
        assert rc == 1 and f"{target}: Permission denied" in err and "lock" not in err and ".parts" not in err, err
    assert os.listdir(ro) == []


def test_export_writes_over_only_what_an_export_wrote(tmp_path, capsys):
    a, b, e = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "e"
    _store(a, ["v1", "v2"], 1.0)
    _store(b, ["v2", "v3"], 2.0)
    e.mkdir()
    (e / "v1.npy").write_bytes(b"mine")
    rc, _, err = run(capsys, "export-features", a, "--out", e)
    assert rc == 2 and "files export-features did not write (e.g. v1.npy)" in err and "--overwrite" in err
    assert os.listdir(e) == ["v1.npy"] and (e / "v1.npy").read_bytes() == b"mine"
    assert run(capsys, "export-features", a, "--out", e, "--overwrite")[0] == 0  # asked: v1.npy is replaced
    assert np.load(e / "v1.npy").tolist() == [[1.0] * D] * 2
    (e / "notes.txt").write_text("mine")
    before = snapshot(e)
    rc, _, err = run(capsys, "export-features", b, "--out", e)
    assert rc == 2 and f"holds an export of another store ({a})" in err and snapshot(e) == before
    assert run(capsys, "export-features", b, "--out", e, "--overwrite")[0] == 0
    assert sorted(os.listdir(e)) == sorted([MANIFEST, "notes.txt", "v2.npy", "v3.npy"])  # a's v1.npy removed
    assert (e / "notes.txt").read_text() == "mine" and np.load(e / "v3.npy").tolist() == [[2.0] * D] * 2
    rc, _, err = run(capsys, "export-features", b, "--out", e)  # its own export, but notes.txt is not its file
    assert rc == 2 and "(e.g. notes.txt)" in err
    (e / "notes.txt").unlink()
    assert run(capsys, "export-features", b, "--out", e)[0] == 0  # a re-export of the same store needs nothing


def test_merge_never_replaces_a_fifo_or_an_input(tmp_path, capsys):
    _store(tmp_path / "in.h5", ["v"])
    os.mkfifo(tmp_path / "fifo")
    before = snapshot(tmp_path)
    for out, needle in [(tmp_path / "fifo", "is a FIFO (named pipe)"), (tmp_path / "in.h5", "is also an input")]:
        rc, _, err = run(capsys, "merge-features", out, tmp_path / "in.h5", "--overwrite")
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert snapshot(tmp_path) == before and os.path.exists(tmp_path / "fifo")


@linux
def test_export_to_a_fifo_names_it_and_a_non_utf8_out_prints_its_bytes(tmp_path, capsys):
    _store(tmp_path / "a.h5", ["v1"])
    os.mkfifo(tmp_path / "fifo")
    rc, _, err = run(capsys, "export-features", tmp_path / "a.h5", "--out", tmp_path / "fifo")
    assert rc == 2 and err.endswith("--out " + str(tmp_path / "fifo") + " is a FIFO (named pipe), not a folder\n")
    odd = os.fsdecode(bytes(tmp_path / "e") + b"\xff\xfe")  # a name that is not UTF-8
    rc, out, _ = run(capsys, "export-features", tmp_path / "a.h5", "--out", odd)
    assert rc == 0 and out.rstrip().endswith(str(tmp_path / "e") + "\\xff\\xfe") and "\\udc" not in out
    (tmp_path / "reg").write_bytes(b"")
    os.rename(tmp_path / "reg", odd + "\udcfd")
    rc, _, err = run(capsys, "export-features", tmp_path / "a.h5", "--out", odd + "\udcfd")
    assert rc == 2 and "\\xff\\xfe\\xfd is a file, not a folder" in err


def test_refused_files_are_lines_on_stderr_with_control_characters_escaped(tmp_path, capsys):
    src = tmp_path / "src"
    good(src, "a", "b")
    (src / "bad.npy").write_bytes(b"junk")
    np.save(src / "vid\nnew.npy", np.ones((2, D), np.float32))
    rc, out, err = run(capsys, "import-features", src, "--out", tmp_path / "o.h5", "--name", "n")
    assert rc == 1
    assert out.splitlines() == [f"imported 2 videos, skipped 0 already in the store, refused 2 -> {tmp_path / 'o.h5'}"]
    assert err.splitlines() == [
        "s2vt import-features: refused: bad: bad.npy: not an .npy array: text",
        "s2vt import-features: refused: vid\\nnew.npy: video id 'vid\\nnew' contains a control character; "
        "rename the file or map it with --id-map"]
    assert FeatureStore(tmp_path / "o.h5").ids == ["a", "b"]


def test_a_store_as_source_is_named_and_an_id_map_that_names_no_file_warns(tmp_path, capsys):
    _store(tmp_path / "s.h5", ["v1"])
    rc, _, err = run(capsys, "import-features", tmp_path / "s.h5", "--out", tmp_path / "o.h5", "--name", "x")
    assert rc == 2 and "s.h5 is already an s2vt feature store: give it as --features" in err
    assert not (tmp_path / "o.h5").exists()
    good(tmp_path / "src", "a", "b")
    (tmp_path / "map.txt").write_text("other vidZ\n")
    with pytest.warns(UserWarning, match="map.txt names none of the 2 files of .*src; their own names are the"):
        rc, _, _ = run(capsys, "import-features", tmp_path / "src", "--out", tmp_path / "o.h5", "--name", "x",
                       "--id-map", tmp_path / "map.txt")
    assert rc == 0
    assert FeatureStore(tmp_path / "o.h5").ids == ["a", "b"]
