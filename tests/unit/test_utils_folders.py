"""writing_folder: a folder (an export, a shard set) appears whole or not at all, and never over someone's files."""

import os

import pytest

from ard_scale.utils.folders import writing_folder


class Failed(Exception):
    pass


def write(folder, **files):
    for name, text in files.items():
        (folder / name).write_text(text)


def contents(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_a_finished_block_publishes_the_folder_and_leaves_nothing_else(tmp_path):
    out = tmp_path / "exports" / "student"
    with writing_folder(out, what="student") as folder:
        assert folder != out and folder.parent == out.parent and not out.exists()  # written beside it, hidden
        write(folder, a="1", b="2")
    assert contents(out) == {"a": "1", "b": "2"}
    assert os.listdir(out.parent) == ["student"]


def test_a_failed_block_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "student"
    with pytest.raises(Failed):
        with writing_folder(out, what="student") as folder:
            write(folder, a="1")
            raise Failed
    assert os.listdir(tmp_path) == []


def test_an_empty_folder_is_filled_and_a_failure_leaves_it_empty(tmp_path):
    out = tmp_path / "student"
    out.mkdir()
    with pytest.raises(Failed):
        with writing_folder(out, what="student") as folder:
            write(folder, a="1")
            raise Failed
    assert out.is_dir() and contents(out) == {}
    with writing_folder(out, what="student") as folder:
        write(folder, a="1")
    assert contents(out) == {"a": "1"} and os.listdir(tmp_path) == ["student"]


def test_a_folder_with_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "pipe"
    out.mkdir()
    write(out, notes="mine")
    with pytest.raises(ValueError, match=f"{out} exists and is not empty; choose a new folder for the pipeline"):
        with writing_folder(out, what="pipeline"):
            pytest.fail("the block ran")
    assert contents(out) == {"notes": "mine"} and os.listdir(tmp_path) == ["pipe"]


def test_replace_swaps_the_old_folder_only_when_the_new_one_is_finished(tmp_path):
    out = tmp_path / "step_00000010"
    out.mkdir()
    write(out, old="0", stale="x")
    with pytest.raises(Failed):
        with writing_folder(out, what="student", replace=True) as folder:
            write(folder, new="1")
            raise Failed
    assert contents(out) == {"old": "0", "stale": "x"}  # a failed export keeps the last good one
    with writing_folder(out, what="student", replace=True) as folder:
        write(folder, new="1")
    assert contents(out) == {"new": "1"} and os.listdir(tmp_path) == ["step_00000010"]
