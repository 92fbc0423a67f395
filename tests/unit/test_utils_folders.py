"""writing_folder: a folder (an export, a shard set) appears whole or not at all, and never over someone's files."""

import os
import socket
import subprocess
import sys

import pytest

from ard_scale.utils.folders import check_new_folder, writing_folder


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


def ended_pid():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def hidden(out, kind, pid, host=None):
    path = out.with_name(f".{out.name}.{kind}-{host or socket.gethostname()}-{pid}-0a1b2c")
    path.mkdir()
    write(path, a=kind)
    return path


def test_a_killed_writers_hidden_folder_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "pipe"
    killed = "with writing_folder(OUT, what='pipeline') as f: (f / 'a').write_text('1'); os._exit(9)"
    code = f"import os, pathlib; from ard_scale.utils.folders import writing_folder; OUT = pathlib.Path({str(out)!r})\n"
    assert subprocess.run([sys.executable, "-c", code + killed]).returncode == 9
    (left,) = os.listdir(tmp_path)
    assert left.startswith(".pipe.partial-")
    unrelated = [hidden(tmp_path / "pipe2", "partial", ended_pid()), tmp_path / ".pipe.partial-by-hand"]
    unrelated[1].mkdir()
    with pytest.warns(UserWarning, match=rf"{out}: removed {left}, left by an interrupted write \(process \d+ ended\)"):
        with writing_folder(out, what="pipeline") as folder:
            write(folder, a="2")
    assert contents(out) == {"a": "2"}
    assert sorted(os.listdir(tmp_path)) == sorted(["pipe"] + [p.name for p in unrelated])


def test_a_hidden_folder_of_a_running_or_remote_writer_is_kept_and_named(tmp_path):
    out = tmp_path / "shards"
    running, remote = hidden(out, "partial", os.getpid()), hidden(out, "partial", ended_pid(), host="node-17.cluster")
    with pytest.warns(UserWarning, match=f"{remote.name}, {running.name} beside it belong to a write that may still"):
        with writing_folder(out, what="shards") as folder:
            write(folder, a="1")
    assert contents(running) == {"a": "partial"} and contents(remote) == {"a": "partial"}


def test_the_last_good_copy_a_killed_replace_had_hidden_is_put_back(tmp_path):
    out = tmp_path / "student"
    old, partial = hidden(out, "old", ended_pid()), hidden(out, "partial", ended_pid())
    with pytest.warns(UserWarning) as said, pytest.raises(ValueError, match="exists and is not empty"):
        check_new_folder(out, "student")  # the copy put back is a folder with files, as before the kill
    assert sorted(str(w.message).split(": ", 1)[1] for w in said) == [
        f"put back the last good copy a killed replace had moved to {old.name}",
        f"removed {partial.name}, left by an interrupted write (process {partial.name.split('-')[-2]} ended)",
    ]
    assert contents(out) == {"a": "old"} and os.listdir(tmp_path) == ["student"]
    assert not old.exists() and not partial.exists()
    stale = hidden(out, "old", ended_pid())  # the destination is there: the hidden copy is only a leftover
    with pytest.warns(UserWarning, match=f"removed {stale.name}"):
        with writing_folder(out, what="student", replace=True) as folder:
            write(folder, a="new")
    assert contents(out) == {"a": "new"} and os.listdir(tmp_path) == ["student"]


def test_a_write_that_fills_the_disk_is_an_error_saying_so_and_leaves_nothing(small_disk):
    import torch

    disk = small_disk(256)
    said = rf"no room for the shards in {disk}: the disk filled up while it was written \(OSError: \[Errno 28\] No"
    with pytest.raises(ValueError, match=said + r" space left on device\); nothing was kept. Make room there"):
        with writing_folder(disk / "shards", what="shards") as folder:
            (folder / "shard-000000.tar").write_bytes(b"x" * (1 << 20))
    assert os.listdir(disk) == []
    # torch's writer (as safetensors') loses the errno: the free space left where it failed says it
    with pytest.raises(ValueError, match=rf"no room for the student in {disk}: .*\(RuntimeError: .*unexpected pos"):
        with writing_folder(disk / "student", what="student") as folder:
            torch.save(torch.zeros(1 << 18), folder / "weights.pt")
    assert os.listdir(disk) == []
    with pytest.raises(Failed):  # any other failure is itself, as before
        with writing_folder(disk / "student", what="student") as folder:
            raise Failed


def test_a_write_that_will_not_fit_is_refused_before_it_starts(small_disk):
    from ard_scale.utils.folders import check_room

    disk = small_disk(512)
    entered = []
    said = rf"no room for the student in {disk}: it takes about 1.0 MiB and the disk has 0.5 MiB free, so it was not"
    with pytest.raises(ValueError, match=said + " written and nothing is left there. Make room there"):
        with writing_folder(disk / "student", what="student", need_bytes=1 << 20):
            entered.append(True)
    assert entered == [] and os.listdir(disk) == []
    # a check inside a folder being written (a pipeline's parts) names the folder a user named, and the outer
    # writing_folder passes it on as it is even where the disk is nearly full (not "filled up while it was written")
    with pytest.raises(ValueError, match=rf"^no room for the pipeline's VAE in {disk}: it takes about 1.0 MiB"):
        with writing_folder(disk / "pipe", what="pipeline", need_bytes=400 << 10) as folder:
            (folder / "transformer.bin").write_bytes(b"x" * (508 << 10))  # 4 KiB left: under 1 % of the disk
            check_room(folder / "vae", 1 << 20, "pipeline's VAE")
    assert os.listdir(disk) == []
    with writing_folder(disk / "student", what="student", need_bytes=400 << 10) as folder:  # it fits
        (folder / "weights.bin").write_bytes(b"x" * (400 << 10))
    assert os.listdir(disk) == ["student"]
