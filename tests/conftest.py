"""Test set-up: simulate 4 CPU devices before any JAX computation, so sharded code paths run on the CPU."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
# Tests never read or write the user's persistent XLA cache (the CLI, called in-process, would enable it).
os.environ["DELIFT_XLA_CACHE"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_default_matmul_precision", "highest")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(directory, torch model, our model, tokenizer): a tiny random GQA Llama with a tiny BPE tokenizer."""
    from delift_jax.models import load_model
    from tiny import make_hf_model, tiny_tokenizer

    directory = tmp_path_factory.mktemp("tiny-llama")
    torch_model = make_hf_model(directory, "llama", seed=7, tokenizer=tiny_tokenizer(), num_key_value_heads=2)
    model, tokenizer, _ = load_model(directory)
    return directory, torch_model, model, tokenizer


@pytest.fixture(autouse=True)
def _no_persistent_compilation_cache():
    """Every test leaves JAX's persistent compilation cache off: with the 4 simulated devices of this process, a
    warm cache made the sharded train step abort (XLA's all-reduce rendezvous), so one test turning it on broke
    every later one."""
    yield
    assert jax.config.jax_compilation_cache_dir is None, (
        "a test turned the persistent XLA cache on; use delift_jax.cli.enable_compilation_cache (off under "
        "simulated devices) and restore jax.config afterwards")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each XLA CPU executable holds a few memory mappings, and
    one process running the whole suite compiles thousands: past the kernel's vm.max_map_count (65,530) LLVM cannot
    map code and the next compilation segfaults (seen in test_train_step, ~26 minutes in)."""
    yield
    jax.clear_caches()
    gc.collect()


# The slowest test files (seconds under `make test`, -n 2, contended, 2026-12-02): kernel_resilience 358,
# model_parity 341, gguf 243, notebooks 216, kernel 155. pytest-xdist's loadfile hands files out in collection order,
# so a slow file collected last kept one worker busy long after the other finished; they are collected first.
SLOWEST_FILES_FIRST = ("test_kernel_resilience.py", "test_model_parity.py", "test_gguf.py", "test_notebooks.py",
                       "test_kernel.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: position for position, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: every other file keeps its order
