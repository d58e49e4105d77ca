"""The surrogate utility (KernelConfig(utility="surrogate")): exact mode unchanged, the store records which entries
are exact, resumes, refuses the other mode; refinement rounds; the pure sampler and network; the refinement loop."""

import dataclasses
import json

import numpy as np
import pytest

from delift_jax.data import Example
from delift_jax.errors import DataError
from delift_jax.kernel import KernelConfig, KernelStoreMismatchError, utility_kernel
from delift_jax.kernel.identity import kernel_identity
from delift_jax.kernel.surrogate import length_scalars, pair_features, sample_pairs
from delift_jax.kernel.surrogate_net import fit_surrogate, predict, r2_score, spearman
from examples import EXAMPLES

POOL = EXAMPLES + [Example("Name a fruit.", " An apple."), Example("Spell 'dog'.", " D-O-G")]
BASE = dict(max_length=256, batch_size=3, max_response_tokens=8)
SURROGATE = KernelConfig(**BASE, utility="surrogate", surrogate_pairs=24, neighbours="encoder")
EXACT_FINGERPRINT = "4abfe4a3ebb7d0e3d1b6b20c93713f128f78db70f5a986f429f02e6d60400c86"  # before the surrogate existed


@pytest.fixture(scope="module")
def exact_kernel(tiny_llama):
    _, _, model, tokenizer = tiny_llama
    return utility_kernel(model, tokenizer, POOL, config=KernelConfig(**BASE, normalization="none"))


def test_exact_mode_is_unchanged(tiny_llama, exact_kernel):
    _, _, model, tokenizer = tiny_llama
    assert KernelConfig().compute_fingerprint({"dtype": "float32"}) == EXACT_FINGERPRINT
    assert KernelConfig(utility="exact").compute_fingerprint({"dtype": "float32"}) == EXACT_FINGERPRINT
    again = utility_kernel(model, tokenizer, POOL, config=KernelConfig(**BASE, normalization="none",
                                                                      utility="exact"))
    np.testing.assert_array_equal(again.utility, exact_kernel.utility)
    assert again.exact is None and exact_kernel.exact is None
    assert KernelConfig(utility="surrogate").compute_fingerprint() != KernelConfig().compute_fingerprint()


def test_surrogate_store_records_exact_entries(tiny_llama, exact_kernel, tmp_path):
    _, _, model, tokenizer = tiny_llama
    result = utility_kernel(model, tokenizer, POOL, config=SURROGATE, out_dir=tmp_path / "k")
    n = len(POOL)
    exact = np.load(tmp_path / "k" / "exact.npy")
    np.testing.assert_array_equal(exact, result.exact)
    assert exact.shape == (n, n) and exact.sum() == 24
    np.testing.assert_allclose(result.utility[exact], exact_kernel.utility[exact], atol=1e-5, rtol=0)
    assert np.all(np.isnan(result.distance_with_example[~exact]))
    manifest = json.loads((tmp_path / "k" / "manifest.json").read_text())
    assert manifest["utility"] == "surrogate" and manifest["complete"] is True
    scores = manifest["summary"]["surrogate"]
    assert {"held_out_r2", "held_out_spearman", "n_train", "n_held_out"} <= set(scores)
    assert scores["exact_entries"] == 24 and scores["entries"] == n * n
    raw = np.load(tmp_path / "k" / "utility_raw.npy")
    np.testing.assert_array_equal(raw, result.utility.astype(np.float32))


def test_refinement_round_adds_exact_entries_and_a_rerun_repeats_it(tiny_llama, exact_kernel, tmp_path):
    from delift_jax.methods.delift import DeliftOptions, delift_selection

    _, _, model, tokenizer = tiny_llama
    options = DeliftOptions(kernel_config=dataclasses.replace(SURROGATE, refine_rounds=1, refine_pairs=100),
                            kernel_dir=tmp_path)
    selection = delift_selection(pool=POOL, budget=3, model=model, tokenizer=tokenizer, options=options)
    info = selection.info["surrogate"]
    assert info["refinement_rounds"] == 1 and len(info["rounds_this_run"]) == 1
    added = info["rounds_this_run"][0]["computed"]["pool"]
    exact = np.load(tmp_path / "pool" / "exact.npy")
    assert exact.sum() == 24 + added and added > 0
    assert info["kernels"]["pool"]["exact_entries"] == exact.sum()
    utility = np.load(tmp_path / "pool" / "utility_raw.npy")
    np.testing.assert_allclose(utility[exact], exact_kernel.utility[exact].astype(np.float32), atol=1e-5, rtol=0)
    if info["rounds_this_run"][0]["picks_changed"] == 0:  # the picks repeated: their columns are exact
        assert exact[:, selection.indices].all()
    np.testing.assert_array_equal(selection.arrays["exact_pool"], exact)
    again = delift_selection(pool=POOL, budget=3, model=model, tokenizer=tokenizer, options=options)
    np.testing.assert_array_equal(again.indices, selection.indices)
    assert again.info["surrogate"]["rounds_this_run"] == []
    np.testing.assert_array_equal(np.load(tmp_path / "pool" / "exact.npy"), exact)
