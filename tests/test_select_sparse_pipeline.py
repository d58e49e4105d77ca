"""The delift method in the sparse mode (kernel_config.top_k): all pairs kept equals the dense method; fewer pairs
select on a SparseKernel with FL1MI caps / FLCG floors from the sparse row maxima."""

import dataclasses
import warnings

import numpy as np
import pytest

from delift_jax.kernel import KernelConfig, utility_kernel
from delift_jax.methods import select
from delift_jax.select import SparseKernel, evaluate, make_objective
from test_methods_delift import CONFIG, EXISTING, POOL, TARGETS

BUDGET = 3


def run(tiny_llama, use_case, top_k, **options):
    _, _, model, tok = tiny_llama
    config = CONFIG if top_k is None else dataclasses.replace(CONFIG, top_k=top_k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # top_k clamped to the candidates available: one-line warning
        return select("delift", pool=POOL, budget=BUDGET, use_case=use_case, targets=TARGETS, existing=EXISTING,
                      model=model, tokenizer=tok, seed=0, kernel_config=config, **options)


@pytest.mark.parametrize("use_case", ["instruction", "task", "continual"])
def test_sparse_with_every_pair_selects_like_dense(tiny_llama, use_case):
    dense = run(tiny_llama, use_case, None)
    sparse = run(tiny_llama, use_case, len(POOL))  # clamped to every candidate: the same pairs as dense
    assert sparse.info["top_k"] == len(POOL)
    np.testing.assert_array_equal(sparse.indices, dense.indices)
    np.testing.assert_allclose(sparse.info["objective_value"], dense.info["objective_value"], rtol=1e-5)


@pytest.mark.parametrize("task_objective", ["fl2mi", "flmi_paper"])
def test_sparse_task_objectives_with_every_pair_select_like_dense(tiny_llama, task_objective):
    dense = run(tiny_llama, "task", None, task_objective=task_objective)
    sparse = run(tiny_llama, "task", len(POOL), task_objective=task_objective)
    np.testing.assert_array_equal(sparse.indices, dense.indices)
    np.testing.assert_allclose(sparse.info["objective_value"], dense.info["objective_value"], rtol=1e-5)


@pytest.mark.parametrize("use_case, task_objective", [("task", "flmi"), ("continual", "fl2mi")])
def test_sparse_with_the_diagonal_excluded_in_every_kernel_set(tiny_llama, tmp_path, use_case, task_objective):
    """The pool kernel's neighbours skip the diagonal; Q and P, which have none, are computed as usual."""
    selection = run(tiny_llama, use_case, 2, exclude_diagonal=True, task_objective=task_objective,
                    kernel_dir=tmp_path)
    assert len(selection.indices) == BUDGET and selection.info["exclude_diagonal"] is True
    neighbours = np.load(tmp_path / "pool" / "kernel_indices.npy")
    assert not (neighbours == np.arange(len(POOL))[:, None]).any()
    other = "targets" if use_case == "task" else "existing"
    assert (tmp_path / other / "kernel_indices.npy").is_file()


@pytest.mark.parametrize("use_case", ["task", "continual"])
def test_sparse_objective_uses_the_sparse_row_maxima(tiny_llama, use_case):
    """The authors' form: common min-max, no candidate weights (continual's defaults are tested against dense
    above)."""
    _, _, model, tok = tiny_llama
    result = run(tiny_llama, use_case, 2, **({"task_objective": "flmi"} if use_case == "task" else
                                             {"scale": "minmax", "quality": "none", "novelty": "none"}))
    config = dataclasses.replace(CONFIG, top_k=2, normalization="none")
    k = utility_kernel(model, tok, POOL, None, config)
    other = utility_kernel(model, tok, TARGETS, POOL, config) if use_case == "task" else \
        utility_kernel(model, tok, POOL, EXISTING, config)
    lo = min(k.utility.min(), other.utility.min())
    hi = max(k.utility.max(), other.utility.max())
    scaled = lambda u: ((np.asarray(u, np.float64) - lo) / (hi - lo))
    kernel = SparseKernel(k.indices, scaled(k.utility).astype(np.float32), len(POOL))
    if use_case == "task":  # Q[i, q] = U(q, i): dense pool x target matrix with absent pairs at 0
        q = np.zeros((len(POOL), len(TARGETS)))
        for t in range(len(TARGETS)):
            q[other.indices[t], t] = scaled(other.utility[t])
        objective = make_objective("flmi", kernel, query_kernel=q.astype(np.float32))
    else:
        p = np.zeros((len(POOL), len(EXISTING)))
        np.put_along_axis(p, other.indices, scaled(other.utility), axis=1)
        objective = make_objective("flcg", kernel, private_kernel=p.astype(np.float32))
    assert result.arrays["indices_K"].shape == (len(POOL), 2)
    np.testing.assert_allclose(result.info["objective_value"], evaluate(objective, result.indices), rtol=1e-5)


def test_delift_run_flags_reach_the_kernel_and_delift_options():
    import argparse

    from delift_jax.pipeline import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--use-case", "instruction", "--data", "ifbench", "--top-k", "16",
                              "--optimizer", "stochastic", "--exclude-diagonal", "--task-objective", "fl2mi"])
    config, _ = command.resolve_run(args)
    assert config.kernel.top_k == 16
    assert config.method_options["delift"] == {"optimizer": "stochastic", "exclude_diagonal": True,
                                               "task_objective": "fl2mi"}
