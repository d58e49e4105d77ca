"""DELIFT and DELIFT (SE) through the registry equal the objectives run on the kernels directly."""

import numpy as np
import pytest

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.kernel import KernelConfig, utility_kernel
from delift_jax.methods import select
from delift_jax.methods.delift_se import similarity
from delift_jax.methods.submodular import common_scale
from delift_jax.select import facility_location, fl_conditional_gain, fl_mutual_information, make_objective, maximize

POOL = [Example(f"What is {i} plus {i}?", f" {2 * i}") for i in range(6)] + [
    Example("Name a color:", " blue"), Example("Translate 'cat' to German.", " Katze")]
TARGETS = [Example("Name a colour:", " red"), Example("Compute 12 * 7", " 84")]
EXISTING = [Example("Write a poem about the sea.", " Waves roll in."), Example("What is 1 plus 1?", " 2")]
CONFIG = KernelConfig(max_length=96, batch_size=4)
BUDGET = 3


@pytest.fixture(scope="module")
def raw(tiny_llama):
    """The three kernels computed directly with utility_kernel (raw utilities)."""
    _, _, model, tok = tiny_llama
    u = lambda rows, cols: np.asarray(utility_kernel(model, tok, rows, cols, CONFIG).utility, np.float64)
    return {"K": u(POOL, None), "Q": u(TARGETS, POOL).T, "P": u(POOL, EXISTING)}


def _direct(use_case, raw):
    names = {"instruction": ["K"], "task": ["K", "Q"], "continual": ["K", "P"]}[use_case]
    values = np.concatenate([raw[n].ravel() for n in names])
    lo, hi = values.min(), values.max()
    k = {n: ((raw[n] - lo) / (hi - lo)).astype(np.float32) for n in names}
    if use_case == "instruction":
        objective = facility_location(k["K"])
    elif use_case == "task":  # the authors' FL1MI, asked for explicitly (the default fl2mi is tested below)
        objective = fl_mutual_information(k["K"], k["Q"], 1.0)
    else:
        objective = fl_conditional_gain(k["K"], k["P"], 1.0)
    return np.asarray(maximize(objective, BUDGET).picks)


@pytest.mark.parametrize("use_case", ["instruction", "task", "continual"])
def test_delift_equals_selection_on_the_kernel(tiny_llama, raw, use_case):
    """The authors' form (one global min-max, diagonal kept) asked for explicitly."""
    _, _, model, tok = tiny_llama
    sel = select("delift", pool=POOL, budget=BUDGET, use_case=use_case, targets=TARGETS, existing=EXISTING,
                 model=model, tokenizer=tok, seed=0, kernel_config=CONFIG, task_objective="flmi", scale="minmax",
                 quality="none", novelty="none")
    assert len(sel.indices) == BUDGET and len(set(sel.indices.tolist())) == BUDGET
    assert sel.indices.min() >= 0 and sel.indices.max() < len(POOL)
    np.testing.assert_array_equal(sel.indices, _direct(use_case, raw))
    np.testing.assert_allclose(sel.arrays["utility_K"], raw["K"], atol=1e-6)
    if use_case == "task":  # Q is the transpose of U(targets, pool): pool rows, target columns
        assert sel.arrays["kernel_Q"].shape == (len(POOL), len(TARGETS))
        np.testing.assert_allclose(sel.arrays["utility_Q"], raw["Q"], atol=1e-6)
    if use_case == "continual":
        assert sel.arrays["kernel_P"].shape == (len(POOL), len(EXISTING))
    assert sel.info["objective"] == {"instruction": "fl", "task": "flmi", "continual": "flcg"}[use_case]
    np.testing.assert_allclose(np.sum(sel.scores), sel.info["objective_value"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task_objective", [None, "fl2mi", "flmi_paper"])
def test_task_objective_option_selects_with_that_form(tiny_llama, raw, task_objective):
    _, _, model, tok = tiny_llama
    chosen = {} if task_objective is None else {"task_objective": task_objective}
    sel = select("delift", pool=POOL, budget=BUDGET, use_case="task", targets=TARGETS, model=model, tokenizer=tok,
                 seed=0, kernel_config=CONFIG, eta=0.5, **chosen)
    task_objective = task_objective or "fl2mi"  # the default
    scaled = common_scale({"K": raw["K"], "Q": raw["Q"]}, "minmax")
    kernels = {"K": scaled["K"].astype(np.float32), "Q": scaled["Q"].astype(np.float32)}
    objective = make_objective(task_objective, None if task_objective == "fl2mi" else kernels["K"],
                               query_kernel=kernels["Q"], eta=0.5)
    np.testing.assert_array_equal(sel.indices, np.asarray(maximize(objective, BUDGET).picks))
    assert sel.info["objective"] == task_objective and sel.info["eta"] == 0.5
    # FL2MI reads only Q: the n² pool kernel is never computed.
    assert ("utility_K" in sel.arrays) == (task_objective != "fl2mi")
    with pytest.raises(DataError, match="task_objective"):
        select("delift", pool=POOL, budget=BUDGET, use_case="task", targets=TARGETS, model=model, tokenizer=tok,
               kernel_config=CONFIG, task_objective="fl3mi")


def _row_ranks(*kernels):
    """Reference: each row's percentile ranks over the kernels' columns together (scipy's average ranks)."""
    from scipy.stats import rankdata

    stacked = np.hstack(kernels)
    ranks = np.vstack([(rankdata(row) - 1) / (len(row) - 1) for row in stacked])
    return np.split(ranks, np.cumsum([k.shape[1] for k in kernels])[:-1], axis=1)


def _prompt_information(model, tok, examples):
    """Reference: Σ log p(response | prompt) − Σ log p(response | empty prompt) from the per-example means."""
    from delift_jax.scoring import ScoringConfig, score_examples

    config = ScoringConfig(max_length=CONFIG.max_length, max_response_tokens=CONFIG.max_response_tokens)
    total = lambda table: table.mean_logp * table.n_scored
    return total(score_examples(model, tok, examples, config)) - total(
        score_examples(model, tok, [Example("", e.response) for e in examples], config))


@pytest.mark.parametrize("use_case", ["instruction", "continual"])
def test_default_kernel_form_is_row_rank(tiny_llama, raw, use_case):
    """instruction and continual default to per-row percentile ranks over K (and P), the diagonal kept; each
    candidate column is weighted by the percentile rank of its prompt information and, in the continual case, by the
    percentile rank of how little the existing data covers it (the negated row maximum of the ranked P)."""
    from scipy.stats import rankdata

    _, _, model, tok = tiny_llama
    sel = select("delift", pool=POOL, budget=BUDGET, use_case=use_case, existing=EXISTING, model=model,
                 tokenizer=tok, seed=0, kernel_config=CONFIG)
    assert sel.info["scale"] == "row_rank" and sel.info["exclude_diagonal"] is False
    assert sel.info["quality"] == "prompt_information"
    assert sel.info["novelty"] == ("existing_coverage" if use_case == "continual" else "none")
    information = _prompt_information(model, tok, POOL)
    np.testing.assert_allclose(sel.arrays["prompt_information"], information, rtol=1e-5, atol=1e-5)
    weights = rankdata(information) / len(POOL)
    if use_case == "instruction":
        (k,) = _row_ranks(raw["K"])
        k = k * weights[None, :]
        objective = facility_location(k.astype(np.float32))
    else:
        k, p = _row_ranks(raw["K"], raw["P"])
        weights = weights * rankdata(-p.max(axis=1)) / len(POOL)
        k = k * weights[None, :]
        objective = fl_conditional_gain(k.astype(np.float32), p.astype(np.float32), 1.0)
        np.testing.assert_allclose(sel.arrays["kernel_P"], p, atol=1e-6)
    np.testing.assert_allclose(sel.arrays["candidate_weights"], weights, rtol=1e-6)
    np.testing.assert_allclose(sel.arrays["kernel_K"], k, atol=1e-6)
    np.testing.assert_array_equal(sel.indices, np.asarray(maximize(objective, BUDGET).picks))
    with pytest.raises(DataError, match="task case"):
        select("delift", pool=POOL, budget=BUDGET, use_case="task", targets=TARGETS, model=model, tokenizer=tok,
               kernel_config=CONFIG, scale="row_rank")


def test_continual_novelty_alone_and_neither(tiny_llama, raw):
    """quality none keeps the novelty weights alone; novelty none as well is the bare row-ranked kernel; novelty is
    refused outside the continual case (no existing data) with a one-line error."""
    from scipy.stats import rankdata

    _, _, model, tok = tiny_llama
    k, p = _row_ranks(raw["K"], raw["P"])
    novelty = rankdata(-p.max(axis=1)) / len(POOL)
    for novelty_form, weights in (("existing_coverage", novelty), ("none", None)):
        sel = select("delift", pool=POOL, budget=BUDGET, use_case="continual", existing=EXISTING, model=model,
                     tokenizer=tok, seed=0, kernel_config=CONFIG, quality="none", novelty=novelty_form)
        assert sel.info["novelty"] == novelty_form and "prompt_information" not in sel.arrays
        kw = k if weights is None else k * weights[None, :]
        assert ("candidate_weights" in sel.arrays) == (weights is not None)
        np.testing.assert_allclose(sel.arrays["kernel_K"], kw, atol=1e-6)
        objective = fl_conditional_gain(kw.astype(np.float32), p.astype(np.float32), 1.0)
        np.testing.assert_array_equal(sel.indices, np.asarray(maximize(objective, BUDGET).picks))
    with pytest.raises(DataError, match="only the continual use case"):
        select("delift", pool=POOL, budget=BUDGET, model=model, tokenizer=tok, kernel_config=CONFIG,
               novelty="existing_coverage")
    with pytest.raises(DataError, match="novelty"):
        select("delift", pool=POOL, budget=BUDGET, use_case="continual", existing=EXISTING, model=model,
               tokenizer=tok, kernel_config=CONFIG, novelty="fresh")


def test_quality_none_is_the_unweighted_kernel(tiny_llama, raw):
    _, _, model, tok = tiny_llama
    sel = select("delift", pool=POOL, budget=BUDGET, model=model, tokenizer=tok, seed=0, kernel_config=CONFIG,
                 quality="none")
    (k,) = _row_ranks(raw["K"])
    assert sel.info["quality"] == "none" and "prompt_information" not in sel.arrays
    np.testing.assert_allclose(sel.arrays["kernel_K"], k, atol=1e-6)
    np.testing.assert_array_equal(sel.indices, np.asarray(maximize(facility_location(k.astype(np.float32)),
                                                                   BUDGET).picks))
    with pytest.raises(DataError, match="quality"):
        select("delift", pool=POOL, budget=BUDGET, model=model, tokenizer=tok, kernel_config=CONFIG,
               quality="length")


def test_quality_weights_and_weighted_candidates():
    from scipy.stats import rankdata

    from delift_jax.methods.delift import quality_weights, weighted_candidates
    from delift_jax.select import SparseKernel

    information = np.array([3.0, -1.0, 3.0, 10.0, 0.5])
    weights = quality_weights(information)
    np.testing.assert_allclose(weights, rankdata(information) / 5)  # ties share their average rank
    assert weights[3] == 1.0 and weights[1] == 0.2
    with pytest.raises(DataError, match="finite"):
        quality_weights(np.array([1.0, np.nan]))
    from delift_jax.methods.delift import novelty_weights

    private = np.array([[0.9, 0.1], [0.2, 0.3], [0.5, 0.5], [0.3, 0.2], [1.0, 0.0]])
    np.testing.assert_allclose(novelty_weights(private), rankdata(-private.max(axis=1)) / 5)
    np.testing.assert_allclose(novelty_weights(private.max(axis=1, keepdims=True)), novelty_weights(private))
    kernel = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_allclose(weighted_candidates(kernel, weights), kernel * weights[None, :], rtol=1e-6)
    indices = np.array([[1, 3], [0, 4], [2, 3], [3, 1], [4, 0]], np.int32)
    values = np.ones((5, 2), np.float32)
    sparse = weighted_candidates(SparseKernel(indices, values, 5), weights)
    np.testing.assert_allclose(np.asarray(sparse.values), weights[indices], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sparse.indices), indices)


def test_row_normalizations_with_ties_and_an_ignored_diagonal():
    raw = {"K": np.array([[5.0, 1.0, 2.0], [0.0, 3.0, 3.0], [1.0, 2.0, 9.0]]), "P": np.array([[0.0], [4.0], [1.0]])}
    ranked = common_scale(raw, "row_rank")
    np.testing.assert_allclose(np.hstack([ranked["K"], ranked["P"]]), np.hstack(_row_ranks(raw["K"], raw["P"])))
    assert ranked["K"][1, 1] == ranked["K"][1, 2] == 0.5  # a tie shares its average rank
    spans = common_scale(raw, "row_minmax", {"K": np.eye(3, dtype=bool)})
    np.testing.assert_allclose(spans["K"], [[0, 0.5, 1], [0, 0, 0.75], [0, 1, 0]])
    np.testing.assert_allclose(spans["P"], [[0], [1], [0]])


def test_delift_is_deterministic_and_resumes_from_a_store(tiny_llama, tmp_path):
    _, _, model, tok = tiny_llama
    run = lambda: select("delift", pool=POOL, budget=BUDGET, use_case="task", targets=TARGETS, model=model,
                         tokenizer=tok, seed=1, kernel_config=CONFIG, kernel_dir=tmp_path)
    first, second = run(), run()
    np.testing.assert_array_equal(first.indices, second.indices)
    # The default task objective (FL2MI) reads only U(targets, pool): no pool store is written.
    assert (tmp_path / "targets").is_dir() and not (tmp_path / "pool").exists()


def test_common_scale_is_one_map_for_all_kernels():
    raw = {"K": np.array([[0.0, 2.0], [1.0, 4.0]]), "Q": np.array([[-2.0], [6.0]])}
    out = common_scale(raw, "minmax")
    np.testing.assert_allclose(out["K"], (raw["K"] + 2) / 8)
    np.testing.assert_allclose(out["Q"], (raw["Q"] + 2) / 8)
    clipped = common_scale(raw, "clip")
    np.testing.assert_allclose(clipped["Q"], [[0.0], [6.0]])
    no_diag = common_scale({"K": np.array([[9.0, 1.0], [3.0, 9.0]])}, "minmax", {"K": np.eye(2, dtype=bool)})
    np.testing.assert_allclose(no_diag["K"], [[0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(DataError, match="scale"):
        common_scale(raw, "zscore")


@pytest.mark.parametrize("use_case", ["instruction", "task", "continual"])
def test_delift_se_equals_selection_on_the_similarity_kernel(use_case):
    rng = np.random.default_rng(0)
    e_pool, e_t, e_x = (rng.normal(size=(n, 8)) for n in (12, 3, 2))
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)
    sel = select("delift_se", pool=[Example(str(i), "") for i in range(12)], budget=4, use_case=use_case,
                 targets=[Example("t", "")] * 3, existing=[Example("x", "")] * 2, seed=0, embeddings=e_pool,
                 target_embeddings=e_t, existing_embeddings=e_x)
    k = (unit(e_pool) @ unit(e_pool).T + 1) / 2
    if use_case == "instruction":
        objective = facility_location(k)
    elif use_case == "task":  # the default task objective: FL2MI, on Q alone
        objective = make_objective("fl2mi", query_kernel=((unit(e_pool) @ unit(e_t).T + 1) / 2).astype(np.float32))
    else:
        objective = fl_conditional_gain(k, (unit(e_pool) @ unit(e_x).T + 1) / 2)
    np.testing.assert_array_equal(sel.indices, np.asarray(maximize(objective, 4).picks))
    assert sel.arrays["kernel_K"].min() >= 0 and sel.arrays["kernel_K"].max() <= 1 + 1e-6


def test_similarity_maps():
    a = np.array([[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(similarity(a, a, "shift"), [[1, 0], [0, 1]])
    np.testing.assert_allclose(similarity(a, a, "clip"), [[1, 0], [0, 1]])
    np.testing.assert_allclose(similarity(a, np.array([[0.0, 1.0]]), "shift"), [[0.5], [0.5]])


def test_delift_se_with_the_real_sentence_encoder():
    pool = [Example("What is the capital of France?", " Paris"), Example("Capital city of France?", " Paris."),
            Example("Write a haiku about rain.", " Soft rain on the roof"), Example("Compute 3 + 4.", " 7")]
    sel = select("delift_se", pool=pool, budget=2, use_case="task", targets=[Example("Add 5 and 6.", " 11")],
                 seed=0)
    assert len(sel.indices) == 2 and len(set(sel.indices.tolist())) == 2
    assert 3 in sel.indices  # the arithmetic example is the one most like the arithmetic target
    assert sel.arrays["embeddings"].shape == (4, 384)
