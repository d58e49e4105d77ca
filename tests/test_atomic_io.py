"""Directories filled atomically: the old complete contents or the new ones, never a partial mix."""

import errno
import json
import os

import numpy as np
import pytest

from delift_jax.atomic_io import atomic_directory


def test_success_replaces_the_old_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()           # nothing visible before the swap
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or retired leftovers


def test_failure_keeps_the_old_directory_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "half.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("killed mid-export")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "fresh"):
            raise RuntimeError("killed")
    assert not (tmp_path / "fresh").exists()


def test_staging_leftovers_of_a_crash_are_removed_by_the_next_write(tmp_path):
    from delift_jax.atomic_io import staging_leftovers

    target = tmp_path / "model"
    crashed = tmp_path / ".model.abc123.tmp"  # what kill -9 inside atomic_directory leaves
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"\0" * 1000)
    retired = tmp_path / ".model.def456.old"
    retired.mkdir()
    other = tmp_path / ".other.abc.tmp"  # another output's staging stays
    other.mkdir()
    assert staging_leftovers(target) == [crashed, retired]
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abc.tmp", "model"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failed_write_keeps_the_old_file_names_the_target_and_leaves_no_temporary(tmp_path, monkeypatch, code):
    from delift_jax import atomic_io

    target = tmp_path / "results.json"
    atomic_io.atomic_save_json(target, {"old": 1})

    def fail(handle, data, path):
        handle.write(data[:3])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic_io, "_write_durably", fail)
    with pytest.raises(OSError) as info:
        atomic_io.atomic_save_json(target, {"new": 2})
    assert info.value.errno == code and info.value.filename == str(target)
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_arrays_are_never_pickled(tmp_path):
    from delift_jax.atomic_io import atomic_save_npy, atomic_save_npz

    with pytest.raises(ValueError):
        atomic_save_npz(tmp_path / "a.npz", values=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        atomic_save_npy(tmp_path / "a.npy", np.array([{"a": 1}], dtype=object))
    assert list(tmp_path.iterdir()) == []
