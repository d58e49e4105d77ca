"""Directories filled atomically: the old complete contents or the new ones, never a partial mix."""

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
