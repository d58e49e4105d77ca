"""The CLI's persistent XLA cache: on for one device, off where simulated CPU devices would deadlock on it."""

import jax
import pytest

from delift_jax import cli


@pytest.fixture
def restore_cache_config():
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_simulated_devices_are_counted_from_flags_and_config(monkeypatch):
    assert cli.simulated_cpu_devices() == 4  # conftest asks for 4
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert cli.simulated_cpu_devices() == 8


def test_cache_stays_off_with_several_simulated_devices(monkeypatch, tmp_path, restore_cache_config):
    # A warm cache made the 4-device train step abort in XLA's all-reduce rendezvous; such processes never use it.
    monkeypatch.setenv("DELIFT_XLA_CACHE", str(tmp_path / "xla"))
    before = jax.config.jax_compilation_cache_dir
    cli.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before


def test_cache_is_on_for_one_device_unless_turned_off(monkeypatch, tmp_path, restore_cache_config):
    monkeypatch.setattr(cli, "simulated_cpu_devices", lambda: 1)
    monkeypatch.setenv("DELIFT_XLA_CACHE", "0")
    before = jax.config.jax_compilation_cache_dir
    cli.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before
    monkeypatch.setenv("DELIFT_XLA_CACHE", str(tmp_path / "xla"))
    cli.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
