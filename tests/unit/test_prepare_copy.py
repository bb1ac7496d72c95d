"""Node-local copies (nodeops copy_tree, run here in-process on real files): a copy that is
verified and renamed, a rerun that copies nothing, an interrupted copy that resumes, a full disk
refused before anything is copied, and a directory that is not ours left alone."""

from __future__ import annotations

import os

from glmlaunch import nodeops


def tree(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return {rel: len(data) for rel, data in files.items()}


FILES = {"config.json": b"{}", "release/__0_0.distcp": b"a" * 1000, "release/.metadata": b"m" * 10}


def test_copy_then_rerun_copies_nothing(tmp_path):
    sizes = tree(tmp_path / "src", FILES)
    c = {"src": str(tmp_path / "src"), "dst": str(tmp_path / "local" / "ck"), "files": sizes}
    assert nodeops.op_copy_tree({"copies": [c]})[c["dst"]] == {"state": "copied", "bytes": 1012, "why": ""}
    assert (tmp_path / "local" / "ck" / "release" / "__0_0.distcp").read_bytes() == b"a" * 1000
    assert not (tmp_path / "local" / "ck.partial").exists()
    assert nodeops.op_copy_tree({"copies": [c]})[c["dst"]]["state"] == "current"
    (tmp_path / "local" / "ck" / "config.json").write_bytes(b"{ }")  # changed: copied again
    assert nodeops.op_copy_tree({"copies": [c]})[c["dst"]]["state"] == "copied"


def test_interrupted_copy_resumes(tmp_path):
    sizes = tree(tmp_path / "src", FILES)
    part = tmp_path / "local" / "ck.partial"
    tree(part, {"config.json": b"{}", "release/__0_0.distcp": b"a" * 10})  # cut short
    c = {"src": str(tmp_path / "src"), "dst": str(tmp_path / "local" / "ck"), "files": sizes}
    got = nodeops.op_copy_tree({"copies": [c]})[c["dst"]]
    assert got == {"state": "copied", "bytes": 1010, "why": ""}  # config.json was kept
    assert (tmp_path / "local" / "ck" / "release" / "__0_0.distcp").stat().st_size == 1000


def test_full_disk_is_refused_before_copying(tmp_path, monkeypatch):
    sizes = tree(tmp_path / "src", FILES)
    c = {"src": str(tmp_path / "src"), "dst": str(tmp_path / "local" / "ck"), "files": sizes}
    monkeypatch.setattr(nodeops, "_free", lambda p: 100)
    got = nodeops.op_copy_tree({"copies": [c]})[c["dst"]]
    assert got["state"] == "failed"
    assert (
        got["why"]
        == f"not enough space in {tmp_path / 'local'}: 1012 bytes (0.00 GiB) to copy, 100 bytes (0.00 GiB) free"
    )
    assert not os.path.exists(tmp_path / "local")


def test_a_directory_that_is_not_ours_is_left_alone(tmp_path):
    sizes = tree(tmp_path / "src", FILES)
    (tmp_path / "local" / "ck").mkdir(parents=True)
    (tmp_path / "local" / "ck" / "mine.txt").write_text("user data")
    c = {"src": str(tmp_path / "src"), "dst": str(tmp_path / "local" / "ck"), "files": sizes}
    got = nodeops.op_copy_tree({"copies": [c]})[c["dst"]]
    assert got["state"] == "failed" and "not a copy made by glmlaunch" in got["why"]
    assert (tmp_path / "local" / "ck" / "mine.txt").read_text() == "user data"
