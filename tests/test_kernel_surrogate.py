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


def test_surrogate_seed_draws_another_sample_and_another_store(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    pool, config = POOL[:6], dataclasses.replace(SURROGATE, surrogate_pairs=10)
    first = utility_kernel(model, tokenizer, pool, config=config, out_dir=tmp_path / "k")
    other = utility_kernel(model, tokenizer, pool, config=dataclasses.replace(config, surrogate_seed=1))
    assert first.exact.sum() == other.exact.sum() == 10 and not np.array_equal(first.exact, other.exact)
    again = utility_kernel(model, tokenizer, pool, config=dataclasses.replace(config, surrogate_seed=0))
    np.testing.assert_array_equal(again.exact, first.exact)
    with pytest.raises(KernelStoreMismatchError):  # a store keeps the seed it was sampled with
        utility_kernel(model, tokenizer, pool, config=dataclasses.replace(config, surrogate_seed=1),
                       out_dir=tmp_path / "k")


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
    # A finished round's block lost or damaged: the next run of the store computes it again, same numbers.
    blocks = sorted((tmp_path / "pool" / "exact").glob("*/blocks/block_*.npz"))
    blocks[0].unlink()
    if len(blocks) > 1:
        blocks[1].write_bytes(blocks[1].read_bytes()[:-7] + b"damaged")
    healed = delift_selection(pool=POOL, budget=3, model=model, tokenizer=tokenizer, options=options)
    np.testing.assert_array_equal(healed.indices, selection.indices)
    assert all(block.is_file() for block in blocks)
    np.testing.assert_array_equal(np.load(tmp_path / "pool" / "exact.npy"), exact)
    np.testing.assert_array_equal(np.load(tmp_path / "pool" / "utility_raw.npy"), utility)


def test_a_store_of_one_mode_is_refused_by_the_other(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    pool = POOL[:4]
    exact_config = KernelConfig(**BASE)
    utility_kernel(model, tokenizer, pool, config=exact_config, out_dir=tmp_path / "exact")
    with pytest.raises(KernelStoreMismatchError, match="holds a dense kernel and this run asks for a surrogate dense"):
        utility_kernel(model, tokenizer, pool, config=dataclasses.replace(SURROGATE, surrogate_pairs=8),
                       out_dir=tmp_path / "exact")
    utility_kernel(model, tokenizer, pool, config=dataclasses.replace(SURROGATE, surrogate_pairs=8),
                   out_dir=tmp_path / "surrogate")
    with pytest.raises(KernelStoreMismatchError, match="holds a surrogate dense kernel and this run asks for a dense"):
        utility_kernel(model, tokenizer, pool, config=exact_config, out_dir=tmp_path / "surrogate")
    assert "utility" not in kernel_identity(model, tokenizer, pool, pool, True, _seqs(tokenizer, pool, exact_config),
                                            exact_config)


def _seqs(tokenizer, pool, config):
    from delift_jax.kernel.pairs import build_pair_sequences

    return build_pair_sequences(tokenizer, pool, pool, config)


def test_surrogate_store_resumes_bit_identically(tiny_llama, tmp_path):
    _, _, model, tokenizer = tiny_llama
    config = dataclasses.replace(SURROGATE, block_pairs=8, top_k=4)
    first = utility_kernel(model, tokenizer, POOL, config=config, out_dir=tmp_path / "k")
    store = tmp_path / "k"
    # A crash after two blocks: the third block, the trained network and the final arrays are gone.
    (store / "blocks" / "block_000002.npz").unlink()
    for name in ("surrogate_pmi.npz", "kernel_values.npy", "exact.npy"):
        (store / name).unlink()
    again = utility_kernel(model, tokenizer, POOL, config=config, out_dir=store)
    assert again.summary["pairs_computed_now"] == 8
    np.testing.assert_array_equal(again.utility, first.utility)
    np.testing.assert_array_equal(again.kernel, first.kernel)
    np.testing.assert_array_equal(again.exact, first.exact)
    np.testing.assert_array_equal(again.indices, first.indices)
    assert again.kernel.shape == (len(POOL), 4) and again.exact.shape == (len(POOL), 4)
    assert not (store / "kernel.npy").exists() and (store / "kernel_indices.npy").exists()


@pytest.mark.parametrize("config, message", [
    (dict(surrogate_pairs=100), "surrogate_pairs apply to the surrogate utility only"),
    (dict(refine_rounds=1), "refine_rounds apply to the surrogate utility only"),
    (dict(utility="surrogate", surrogate_pairs=3), "surrogate_pairs=3 is too small"),
    (dict(utility="surrogate", refine_rounds=-1), "refine_rounds=-1 must be 0"),
    (dict(surrogate_seed=1), "surrogate_seed apply to the surrogate utility only"),
    (dict(utility="surrogate", surrogate_seed=-1), "surrogate_seed=-1 must be 0 or more"),
    (dict(utility="surrogate", refine_pairs=0), "refine_pairs=0 must be at least 1"),
    (dict(utility="approximate"), "utility 'approximate' is unknown"),
])
def test_bad_surrogate_settings_are_one_line_errors(config, message):
    with pytest.raises(DataError, match=message) as error:
        KernelConfig(**config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["kernel", "--data", "ifbench", "--surrogate-pairs", "100"], "--surrogate-pairs applies to --utility surrogate"),
    (["kernel", "--data", "ifbench", "--surrogate-seed", "1"], "--surrogate-seed applies to --utility surrogate"),
    (["kernel", "--data", "ifbench", "--utility", "surrogate", "--surrogate-pairs", "2"],
     "--surrogate-pairs 2 must be at least 8"),
    (["run", "--use-case", "instruction", "--data", "ifbench", "--surrogate-pairs", "100"],
     "surrogate_pairs apply to the surrogate utility only"),
    (["run", "--use-case", "task", "--data", "ifbench", "--utility", "surrogate", "--refine-rounds", "-1"],
     "--refine-rounds -1 must not be negative"),
    (["run", "--use-case", "task", "--data", "ifbench", "--refine-pairs", "10"],
     "refine_pairs apply to the surrogate utility only"),
])
def test_bad_surrogate_flags_are_one_line_errors(capsys, tmp_path, argv, message):
    from delift_jax import cli

    code = cli.main(argv + ["--model", "no/such/model", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The pure parts.


def test_sample_is_stratified_fixed_size_distinct_and_seeded():
    rng = np.random.default_rng(0)
    near = np.argsort(rng.random((300, 300)), axis=1)[:, :16]
    sample = sample_pairs(300, 300, 1000, near, diagonal=True, seed=3)
    keys = sample.pairs[:, 0] * 300 + sample.pairs[:, 1]
    assert len(sample) == 1000 and len(np.unique(keys)) == 1000
    counts = np.bincount(sample.stratum, minlength=3)
    assert counts[0] == 250 and counts[1] == 500 and counts[2] == 250  # a quarter diagonal, half neighbours, the rest
    assert np.all(sample.pairs[sample.stratum == 0, 0] == sample.pairs[sample.stratum == 0, 1])
    neighbour = sample.pairs[sample.stratum == 1]
    assert all(j in near[i] for i, j in neighbour)
    assert 240 <= len(np.unique(sample.pairs[:, 0])) <= 250  # 250 rows sampled, about 4 pairs on each
    held_rows = np.unique(sample.pairs[sample.held_out, 0])
    assert len(held_rows) == 50 and not np.isin(sample.pairs[~sample.held_out, 0], held_rows).any()
    order = np.lexsort((sample.pairs[:, 0], sample.pairs[:, 1]))
    np.testing.assert_array_equal(order, np.arange(1000))  # plan order: by candidate, then target
    again = sample_pairs(300, 300, 1000, near, diagonal=True, seed=3)
    np.testing.assert_array_equal(again.pairs, sample.pairs)
    whole = sample_pairs(5, 4, 100, near[:5, :2] % 4, diagonal=False, seed=0)
    assert len(whole) == 20  # a sample larger than the kernel is the whole kernel


def test_network_learns_a_utility_that_its_features_determine():
    """U = 2 cos + 3 [i = j]: the ridge baseline alone can hold it (the network must not spoil it)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 32))
    labels = rng.integers(6, size=150)
    embeddings = centres[labels] + 0.5 * rng.normal(size=(150, 32))
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    utility = 2.0 * (unit @ unit.T) + 3.0 * np.eye(150)
    near = np.argsort(-(unit @ unit.T), axis=1)[:, :16]
    sample = sample_pairs(150, 150, 1500, near, diagonal=True, seed=0)
    features = pair_features(embeddings, embeddings, length_scalars([Example("a", "b")] * 150),
                             length_scalars([Example("a", "b")] * 150), square=True)
    fitted = fit_surrogate(features, sample.pairs, utility[sample.pairs[:, 0], sample.pairs[:, 1]],
                           sample.held_out)
    assert fitted.scores["held_out_r2"] > 0.999 and fitted.scores["held_out_spearman"] > 0.999
    everything = np.argwhere(np.ones((150, 150), bool))
    predicted = predict(fitted, everything)
    assert r2_score(utility.ravel(), predicted) > 0.999
    again = fit_surrogate(features, sample.pairs, utility[sample.pairs[:, 0], sample.pairs[:, 1]], sample.held_out)
    np.testing.assert_array_equal(predict(again, everything), predicted)  # seeded: bit-identical


def test_network_falls_back_to_the_baseline_on_noise():
    """Pure noise: early stopping keeps step 0 (the ridge baseline), so the network adds nothing."""
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(60, 16))
    scalars = length_scalars([Example("a", "b")] * 60)
    features = pair_features(embeddings, embeddings, scalars, scalars, square=True)
    sample = sample_pairs(60, 60, 400, np.argsort(rng.random((60, 60)), axis=1)[:, :8], diagonal=True, seed=0)
    fitted = fit_surrogate(features, sample.pairs, rng.normal(size=len(sample)), sample.held_out)
    assert fitted.scores["steps"] == 0


def test_refine_loop_stops_when_the_picks_repeat_also_after_a_resume():
    from delift_jax.methods.refine import refine_loop

    course = iter([[0, 1], [0, 2], [0, 2]])  # the greedy's picks after 0, 1, 2 rounds
    rounds = []
    add = lambda pairs: rounds.append(pairs) or {"K": 1}
    wanted = lambda picks: {"K": np.array([[0, p] for p in picks])}
    picks, history = refine_loop(lambda: next(course), np.asarray, wanted, add, 0, 5)
    assert picks == [0, 2] and len(rounds) == 2 and [h["picks_changed"] for h in history] == [1, 0]
    # Interrupted after its second round: the resumed loop compares its first picks with the ones that round was
    # chosen for, and stops there as the uninterrupted loop did.
    rounds.clear()
    picks, history = refine_loop(lambda: [0, 2], np.asarray, wanted, add, 2, 5, previous=np.array([2, 0]))
    assert picks == [0, 2] and rounds == [] and history == []
    picks, history = refine_loop(lambda: [0, 2], np.asarray, wanted, add, 2, 5)  # without them: one more round
    assert len(rounds) == 1


def test_scores():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 6]) == pytest.approx(1.0)  # ties share their average rank
    assert r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert r2_score([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Wiring: the use cases, the commands.


@pytest.mark.parametrize("use_case, top_k, refined, exclude", [("task", None, {"targets"}, None),
                                                               ("continual", 2, {"pool", "existing"}, None),
                                                               ("continual", 2, {"pool", "existing"}, True)])
def test_selection_on_surrogate_kernels_in_each_use_case(tiny_llama, tmp_path, use_case, top_k, refined, exclude):
    from delift_jax.methods.delift import DeliftOptions, delift_selection

    _, _, model, tokenizer = tiny_llama
    config = dataclasses.replace(SURROGATE, surrogate_pairs=10, top_k=top_k, refine_rounds=1)
    others = {"targets": POOL[6:]} if use_case == "task" else {"existing": POOL[6:]}
    options = DeliftOptions(kernel_config=config, kernel_dir=tmp_path, exclude_diagonal=exclude)
    selection = delift_selection(pool=POOL[:6], budget=2, use_case=use_case, model=model, tokenizer=tokenizer,
                                 options=options, **others)  # a round's stores match the selection's (excluded too)
    assert len(selection.indices) == 2 and set(selection.indices) <= set(range(6))
    info = selection.info["surrogate"]
    assert set(info["kernels"]) == refined and info["refinement_rounds"] <= 1  # FLCG: K's columns, P's rows
    stores = ["targets"] if use_case == "task" else ["pool", "existing"]  # fl2mi reads no pool kernel
    for name in stores:
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["utility"] == "surrogate" and manifest["mode"] == ("dense" if top_k is None else "sparse")
        assert (tmp_path / name / "exact.npy").is_file()


def test_run_flags_reach_the_kernel_config(tmp_path):
    import argparse

    from delift_jax.pipeline import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--use-case", "instruction", "--data", "ifbench", "--utility", "surrogate",
                              "--surrogate-pairs", "500", "--refine-rounds", "2", "--refine-pairs", "64",
                              "--top-k", "16", "--surrogate-seed", "7", "--out", str(tmp_path)])
    config, _ = command.resolve_run(args)
    assert (config.kernel.utility, config.kernel.surrogate_pairs, config.kernel.refine_rounds,
            config.kernel.refine_pairs, config.kernel.top_k, config.kernel.surrogate_seed) == (
                "surrogate", 500, 2, 64, 16, 7)
    assert config.to_dict()["kernel"]["utility"] == "surrogate"
    exact, _ = command.resolve_run(parser.parse_args(["--use-case", "instruction", "--data", "ifbench"]))
    assert not {"utility", "surrogate_pairs", "surrogate_seed", "refine_rounds", "refine_pairs"} & set(
        exact.to_dict()["kernel"])


@pytest.mark.parametrize("top_k", [None, 4])
def test_kernel_command_writes_a_surrogate_store(tiny_llama, tmp_path, capsys, top_k):
    from delift_jax import cli

    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in POOL))
    out = tmp_path / "k"
    argv = ["kernel", "--model", str(tiny_llama[0]), "--data", str(data), "--max-length", "256",
            "--max-response-tokens", "8", "--utility", "surrogate", "--surrogate-pairs", "24", "--neighbours",
            "encoder", "--out", str(out)] + ([] if top_k is None else ["--top-k", str(top_k)])
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    entries = 81 if top_k is None else 9 * top_k
    assert f"surrogate: 24 of {entries} entries exact, held-out R2" in stdout
    assert np.load(out / "exact.npy").sum() == 24
    manifest = json.loads((out / "manifest.json").read_text())
    published = {"exact.npy", "distance_no_example.npy", "distance_with_example.npy"} | (
        {"kernel.npy", "utility_raw.npy"} if top_k is None
        else {"kernel_indices.npy", "kernel_values.npy", "utility_raw_values.npy"})
    assert published <= set(manifest["files"])  # checksummed, so delift select verifies what it reads
    assert cli.main(["select", "--kernel", str(out), "--objective", "fl", "--budget", "3", "--out",
                     str(tmp_path / "sel")]) == 0  # delift select reads a surrogate store like an exact one
    assert "records no checksums" not in capsys.readouterr().err
    picks = np.load(tmp_path / "sel" / "picks.npy")
    assert len(picks) == 3 and len(set(picks.tolist())) == 3


def test_floor_stratum_gives_rows_beyond_the_sample_their_nearest_candidates():
    """floor_share: every row (when the share buys them) gets its nearest candidate exact; held-out rows are drawn
    among the other strata's rows; floor_share=0 leaves the sample as it was."""
    rng = np.random.default_rng(4)
    near = np.argsort(rng.random((90, 30)), axis=1)[:, :16]
    plain = sample_pairs(90, 30, 135, near, diagonal=False, seed=2)
    np.testing.assert_array_equal(sample_pairs(90, 30, 135, near, diagonal=False, seed=2, floor_share=0.0).pairs,
                                  plain.pairs)
    sample = sample_pairs(90, 30, 135, near, diagonal=False, seed=2, floor_share=0.7)
    keys = sample.pairs[:, 0] * 30 + sample.pairs[:, 1]
    assert len(sample) == 135 and len(np.unique(keys)) == 135
    floor = sample.pairs[sample.stratum == 3]
    assert 90 - 40 <= len(floor) <= 90 and np.all(floor[:, 1] == near[floor[:, 0], 0])
    covered = set(keys.tolist())
    assert all(i * 30 + near[i, 0] in covered for i in range(90))  # every row's nearest candidate is exact
    others = np.unique(sample.pairs[sample.stratum != 3, 0])
    held_rows = np.unique(sample.pairs[sample.held_out, 0])
    assert len(held_rows) == round(0.2 * len(others)) and np.isin(held_rows, others).all()
    assert not np.isin(sample.pairs[~sample.held_out, 0], held_rows).any()
    two = sample_pairs(90, 30, 400, near, diagonal=False, seed=2, floor_share=0.5, floor_k=2)
    two_keys = set((two.pairs[:, 0] * 30 + two.pairs[:, 1]).tolist())
    assert all(i * 30 + near[i, j] in two_keys for i in range(90) for j in range(2))
    few = sample_pairs(90, 30, 40, near, diagonal=False, seed=2, floor_share=0.5)
    assert (few.stratum == 3).sum() <= 20 and len(few) == 40  # the share buys 20 rows, not all 90


@pytest.mark.parametrize("lengths_hold_out", [True, False])
def test_baseline_keeps_the_length_scalars_only_where_they_predict_held_out_rows(lengths_hold_out):
    """U = cos + 3 s_j on the training rows; on the held-out rows the same (the scalars predict them: kept) or
    cos - 3 s_j (they mislead there: the cosine baseline alone is chosen)."""
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(80, 16))
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scalars = rng.normal(size=(80, 2)).astype(np.float32)
    held_rows = np.arange(16)
    sign = np.where(np.isin(np.arange(80), held_rows) & (not lengths_hold_out), -1.0, 1.0)
    utility = unit @ unit.T + 3.0 * sign[:, None] * scalars[None, :, 1]
    features = pair_features(embeddings, embeddings, scalars, scalars, square=False,
                             self_index=np.full(80, -1))
    pairs = np.argwhere(rng.random((80, 80)) < 0.2)
    held = np.isin(pairs[:, 0], held_rows)
    fitted = fit_surrogate(features, pairs, utility[pairs[:, 0], pairs[:, 1]], held)
    assert fitted.scores["baseline"] == ("cosine+lengths" if lengths_hold_out else "cosine")
