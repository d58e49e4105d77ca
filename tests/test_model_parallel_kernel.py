"""Model-parallel scoring and kernel pair engine: on (data, model) meshes of the 4 simulated CPU devices the
parameters really are split, and log-probabilities and utilities equal those of one device; ``--mesh`` errors.

Tolerances (float32, unit roundoff u = 2**-24 ~ 6e-8). Tensor parallelism changes only the order in which
partial sums are added: the contractions over heads (o_proj), the MLP width (down_proj), the vocabulary (the
logsumexp) and, for the FSDP-gathered weights, nothing at all (gathering is exact). Rounding errors of a
reordered sum of n terms behave like a random walk, ~sqrt(n) * u * |terms| (worst case 2(n-1) u sum|terms|,
Higham, Accuracy and Stability, 3.1). Here the largest n is the vocabulary, 328 (sqrt(n) u ~ 1.1e-6 per unit
magnitude), activations are RMS-normalised (O(1)), two layers and the head compose a handful of such sums, and
log p = z_t - logsumexp(z) moves by at most twice the largest logit change. That gives a few 1e-6 on log p, so
LOGP_ATOL = 1e-5 (the bound with a ~3x margin, and the float32 tolerance of the project's parity tests).
Utilities: d_rms = RMS over tokens of (1 - p) is 1-Lipschitz in max|delta p| <= ~max|delta log p| (p <= 1), the
PMI utility is a mean of log p differences, and U subtracts two such distances: UTILITY_ATOL = 2 * LOGP_ATOL.
A (D, 1) mesh runs the data-parallel program unchanged (FSDP only gathers), so it must be bit-identical.
"""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from delift_jax.cli import main
from delift_jax.kernel import KernelConfig, utility_kernel
from delift_jax.kernel.engine import _UNIT_FIELDS, PairScorer, _empty_unit
from delift_jax.kernel.packing import UnitShape
from delift_jax.kernel.pairs import build_pair_sequences, full_sequences_for
from delift_jax.kernel.compute import plan_pairs
from delift_jax.scoring import ScoringConfig, TeacherForcedScorer, no_example_sequences
from delift_jax.sharding import (current_mesh, data_mesh, data_size, dotted_name, inference_mesh, kv_spec,
                                 mesh_option, model_mesh, split_rows)
from delift_jax.errors import DeliftError
from examples import EXAMPLES

LOGP_ATOL = 1e-5
UTILITY_ATOL = 2 * LOGP_ATOL
MESHES = [(4, 1), (2, 2), (1, 4)]
POOL = EXAMPLES[:4]


def _param(state, name):
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return next(leaf for path, leaf in leaves if dotted_name(path) == name)


@pytest.fixture(scope="module")
def one_device():
    return data_mesh(jax.devices()[:1])


@pytest.fixture(scope="module")
def sequences(tiny_llama):
    _, _, _, tokenizer = tiny_llama
    return no_example_sequences(tokenizer, EXAMPLES[:6], ScoringConfig(max_length=256))


@pytest.fixture(scope="module")
def reference_logprobs(tiny_llama, sequences, one_device):
    return TeacherForcedScorer(tiny_llama[2], ScoringConfig(max_length=256), mesh=one_device).logprobs(sequences)


@pytest.mark.parametrize("shape", MESHES)
def test_scoring_on_a_model_mesh_equals_one_device(tiny_llama, sequences, reference_logprobs, shape):
    scorer = TeacherForcedScorer(tiny_llama[2], ScoringConfig(max_length=256), mesh=model_mesh(*shape))
    ours = scorer.logprobs(sequences)
    assert all(np.all(np.isfinite(lp)) and lp.size for lp in reference_logprobs)
    for a, b in zip(ours, reference_logprobs):
        if shape[1] == 1:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, atol=LOGP_ATOL, rtol=0)


def test_parameters_are_split_over_the_model_axis(tiny_llama):
    mesh = model_mesh(1, 4)
    state = TeacherForcedScorer(tiny_llama[2], ScoringConfig(max_length=256), mesh=mesh).state
    q = _param(state, "layers.attn.q_proj.kernel")  # [layers, embed 64, heads*head_dim 64]
    assert q.sharding.spec == P(None, None, "model")
    assert {s.data.shape for s in q.addressable_shards} == {(q.shape[0], q.shape[1], q.shape[2] // 4)}
    down = _param(PairScorer(tiny_llama[2], KernelConfig(max_length=256), mesh=mesh).state,
                  "layers.mlp.down_proj.kernel")  # [layers, mlp 96, embed 64]
    assert down.sharding.spec == P(None, "model", None)
    assert {s.data.shape for s in down.addressable_shards} == {(down.shape[0], down.shape[1] // 4, down.shape[2])}
    fsdp = _param(PairScorer(tiny_llama[2], KernelConfig(max_length=256), mesh=model_mesh(2, 2)).state,
                  "layers.attn.o_proj.kernel")  # [layers, heads*head_dim, embed]: model x data
    assert fsdp.sharding.spec == P(None, "model", "data")
    # The demonstrations' keys/values follow the KV heads where the model axis divides them (2 KV heads here).
    assert kv_spec(model_mesh(2, 2), 2) == P(None, None, None, "model", None)
    assert kv_spec(model_mesh(1, 4), 2) == P(None, None, None, None, None)
    assert kv_spec(data_mesh(), 2) == P(None, None, None, None, None)


@pytest.mark.parametrize("shape, constrained", [((2, 2), 2), ((1, 4), 0)])
def test_prefix_keys_values_are_held_split_over_kv_heads(tiny_llama, shape, constrained):
    """The lowered unit program pins the stacked prefix keys and values [layers, 1, p, kv_heads, head_dim] to the
    model axis along the KV heads (lowering only, nothing compiled)."""
    mesh = model_mesh(*shape)
    scorer = PairScorer(tiny_llama[2], KernelConfig(max_length=256), mesh=mesh)
    empty = _empty_unit(UnitShape(prefix=8, rows=2, length=16, scored=4))
    arrays = [split_rows(np.stack([getattr(empty, f)] * data_size(mesh)), mesh) for f in _UNIT_FIELDS]
    text = scorer._program.lower(scorer.state, *arrays).as_text()
    pinned = r'sharding_constraint %\S+ <@mesh, \[\{\}, \{\}, \{\}, \{"model"\}, \{\}\]> : tensor<2x1x8x2x16x'
    assert len(re.findall(pinned, text)) == constrained  # keys and values


@pytest.fixture(scope="module")
def reference_kernel(tiny_llama, one_device):
    _, _, model, tokenizer = tiny_llama
    return utility_kernel(model, tokenizer, POOL, config=KernelConfig(distance="rms", max_length=256,
                                                                       tokens_per_call=4096), mesh=one_device)


@pytest.mark.parametrize("shape", MESHES)
def test_kernel_on_a_model_mesh_equals_one_device(tiny_llama, reference_kernel, shape):
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(distance="rms", max_length=256, tokens_per_call=4096)
    # Most pairs reuse their demonstration's keys/values (the prefix path is what is being tested).
    assert reference_kernel.summary["pairs_without_prefix_reuse_now"] < len(POOL) ** 2 // 2
    with inference_mesh(model_mesh(*shape)):  # as `delift run --mesh` reaches the kernel
        ours = utility_kernel(model, tokenizer, POOL, config=config)
    for field in ("utility", "distance_no_example", "distance_with_example"):
        a, b = getattr(ours, field), getattr(reference_kernel, field)
        assert np.all(np.isfinite(b))
        if shape[1] == 1:
            np.testing.assert_array_equal(a, b, err_msg=field)
        else:
            np.testing.assert_allclose(a, b, atol=UTILITY_ATOL, rtol=0, err_msg=field)


def test_pair_log_probs_on_a_model_mesh(tiny_llama, one_device):
    """Per-token log p of pairs through the prefix engine (both distances derive from them)."""
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, tokens_per_call=4096)
    seqs = build_pair_sequences(tokenizer, POOL, POOL, config)
    pairs = plan_pairs(len(POOL), len(POOL), None)
    full = full_sequences_for(tokenizer, POOL, POOL, pairs, seqs, config)
    reference = PairScorer(model, config, mesh=one_device).score(pairs, seqs, full)
    ours = PairScorer(model, config, mesh=model_mesh(2, 2)).score(pairs, seqs, full)
    for a, b in zip(ours, reference):  # (rms, mean log p) per pair
        np.testing.assert_allclose(a, b, atol=LOGP_ATOL, rtol=0)


def test_data_mesh_shares_one_program_and_compiles_once_per_shape(tiny_llama, one_device):
    """Two engines on one data mesh (the kernel builds one for the no-example scores and one for the blocks) share
    one jitted program, so a shape compiles once per run, as before meshes had a model axis."""
    _, _, model, tokenizer = tiny_llama
    config = KernelConfig(max_length=256, tokens_per_call=4096)
    first, second = PairScorer(model, config, mesh=one_device), PairScorer(model, config, mesh=one_device)
    assert first._program is second._program
    sequences = build_pair_sequences(tokenizer, POOL, POOL, config).no_example
    first.score_sequences(sequences)
    compiled = first._program._cache_size()
    second.score_sequences(sequences)
    assert first._program._cache_size() == compiled >= 1
    assert current_mesh().shape == data_mesh().shape  # outside inference_mesh: every local device, data parallel


@pytest.mark.parametrize("spec, message", [
    ("data=3,model=2", "needs 6 devices; 4 are available"),
    ("data=1,model=2", "data x model = 2 devices, but this process has 4"),
    ("data=2,pipeline=2", "write axes as data=N,model=M"),
    ("data=two", "write axes as data=N,model=M"),
])
@pytest.mark.parametrize("command", [["kernel", "--out", "OUT"], ["run", "--use-case", "instruction", "--out", "OUT"]])
def test_bad_mesh_is_one_error_line(tmp_path, capsys, spec, message, command):
    argv = [tmp_path / "k" if a == "OUT" else a for a in command] + ["--data", str(tmp_path / "absent.jsonl"),
                                                                     "--mesh", spec]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "k").exists()


def test_mesh_option_accepts_every_device():
    assert dict(mesh_option("data=2,model=2").shape) == {"data": 2, "model": 2}
    assert dict(mesh_option("model=4").shape) == {"data": 1, "model": 4}
    with pytest.raises(DeliftError, match="product is 4"):
        mesh_option("data=2")


def test_distance_default_comes_from_kernel_config():
    from delift_jax.cli import build_parser

    parser = build_parser()
    for argv in (["kernel", "--data", "x", "--out", "y"], ["run"]):
        assert parser.parse_args(argv).distance is None
    kernel_help = parser._subparsers._group_actions[0].choices["kernel"].format_help()
    assert f"(default {KernelConfig.distance})" in " ".join(kernel_help.split())


def test_run_use_case_runs_its_stages_inside_the_mesh(monkeypatch):
    """``run_use_case(mesh=...)`` (``delift run --mesh``) makes the mesh the default of every kernel and scorer of
    the run, and only for the run."""
    from delift_jax.pipeline import run as run_module

    seen = []
    monkeypatch.setattr(run_module, "_run_use_case", lambda *args: seen.append(current_mesh()) or {})
    mesh = model_mesh(2, 2)
    run_module.run_use_case("model", "data", use_case="instruction", budget=0.3, methods=("random",), out_dir="x",
                            mesh=mesh)
    assert seen == [mesh] and current_mesh() is not mesh
