"""Model-parallel sparse-mode embeddings and generation: on (data, model) meshes of the 4 simulated CPU devices the
parameters really are split, the mean-pooled embeddings equal the data mesh's, the sparse kernel picks the same
neighbours, and greedy (and seeded sampled) decoding emits the same tokens as one device.

Tolerance of the embeddings (float32, u = 2**-24 ~ 6e-8). As for log p in test_model_parallel_kernel, tensor
parallelism only reorders float32 sums: here the contractions over heads (o_proj, 64 terms) and the MLP width
(down_proj, 96 terms) of each of the two layers, partial sums added across 2 or 4 devices (the vocabulary is not
involved: no logits). A reordered sum of n terms moves by ~sqrt(n) u |terms| (<= 10 u ~ 6e-7 relative here), the
two layers compose four such sums in the residual stream, and the final RMSNorm maps a relative error of the
stream to an absolute one on O(1) outputs (norm scales 1 +- 0.1 in the tiny model); the mean over tokens does
not add to it. That is a few 1e-6, so EMBED_ATOL = LOGP_ATOL = 1e-5 (the bound with a ~3x margin). A (D, 1) mesh
runs the data-parallel program unchanged (FSDP only gathers), so it must be bit-identical to the data mesh.

Generation compares tokens, which are exact: a greedy argmax (or a seeded categorical draw) could only flip where
two logits of a step lie within ~1e-5 of each other; the smallest top-1 / top-2 gap of the greedy steps here is
0.015 (measured once with full forward passes), three orders of magnitude clear of it.
(D, 1) decodes each row with fewer rows per device than one device does, so it too is compared on tokens.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from delift_jax.data import DEFAULT_TEMPLATES
from delift_jax.evaluate.generate import BatchDecoder, GenerationConfig, generate_ids, prompt_ids
from delift_jax.kernel import KernelConfig, sparse, utility_kernel
from delift_jax.kernel.embeddings import MeanPooler, mean_pooled_embeddings
from delift_jax.kernel.pairs import build_pair_sequences
from delift_jax.scoring import ScoringConfig, no_example_sequences
from delift_jax.sharding import data_mesh, dotted_name, inference_mesh, model_mesh, split_rows
from examples import EXAMPLES
from test_model_parallel_kernel import LOGP_ATOL

EMBED_ATOL = LOGP_ATOL
MESHES = [(4, 1), (2, 2), (1, 4)]
MAX_LENGTH = 96  # embeddings: one length bucket (one program per mesh)
MAX_NEW = 8
MAX_PROMPT = 64  # the 5 prompts (55 to 68 tokens) share one bucket: one decode program per mesh
Q_PROJ = "layers.attn.q_proj.kernel"  # [layers 2, embed 64, heads*head_dim 64]


def _param(state, name):
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return next(leaf for path, leaf in leaves if dotted_name(path) == name)


def _assert_split_over_model(state, mesh):
    """q_proj's heads are split over ``model`` (its width over ``data`` too where data > 1: FSDP)."""
    q = _param(state, Q_PROJ)
    data, model = mesh.shape["data"], mesh.shape["model"]
    assert q.sharding.spec == P(None, "data" if data > 1 else None, "model")
    assert {s.data.shape for s in q.addressable_shards} == {(q.shape[0], q.shape[1] // data, q.shape[2] // model)}


def _takes_q_proj_split(text: str, mesh) -> bool:
    """Whether a lowered program takes a [2, 64, 64] float32 argument (q_proj's shape; o_proj's is split the other
    way) split as the rules split q_proj on ``mesh``."""
    width = '{"data"}' if mesh.shape["data"] > 1 else "{}"
    spec = re.escape(f'[{{}}, {width}, {{"model"}}]')
    return re.search(r'tensor<2x64x64xf32> \{[^}]*sharding<@\w+, ' + spec + '>', text) is not None


# ------------------------------------------------------------------------------------------------- embeddings

@pytest.fixture(scope="module")
def sequences(tiny_llama):
    return no_example_sequences(tiny_llama[3], EXAMPLES, ScoringConfig(max_length=MAX_LENGTH))


@pytest.fixture(scope="module")
def data_embeddings(tiny_llama, sequences):
    """On the 1-D data mesh of the 4 devices: the path the sparse mode took before it had a model axis. Two
    batches of 4 and 3 rows of 58 to 96 tokens (the longest cut to MAX_LENGTH), both padded to 96: one short call
    on 4 data indices, one full call on 2, two calls on 1."""
    return mean_pooled_embeddings(tiny_llama[2], sequences, max_length=MAX_LENGTH, batch_size=4, mesh=data_mesh())


@nnx.jit
def _final_states(model, tokens_1t):
    return model(tokens_1t)[0][0]


def test_data_mesh_embeddings_are_mean_pooled_hidden_states(tiny_llama, sequences, data_embeddings):
    """An independent reference: each sequence alone through the model (no mask, no batch, one device) at the
    start of a fixed buffer (causal attention: what follows it does not matter), its final states averaged."""
    model = tiny_llama[2]
    for i, seq in enumerate(sequences):
        buffer = np.zeros((1, 256), np.int32)
        buffer[0, :len(seq)] = seq.tokens
        states = np.asarray(_final_states(model, jnp.asarray(buffer)))[:len(seq)]
        np.testing.assert_allclose(data_embeddings[i], states.mean(axis=0), atol=EMBED_ATOL, rtol=0)
    assert np.all(np.abs(data_embeddings).max(axis=1) > 0.1)  # not vacuous: O(1) normed states


@pytest.mark.parametrize("shape", MESHES)
def test_embeddings_on_a_model_mesh_equal_the_data_mesh(tiny_llama, sequences, data_embeddings, shape):
    ours = mean_pooled_embeddings(tiny_llama[2], sequences, max_length=MAX_LENGTH, batch_size=4,
                                  mesh=model_mesh(*shape))
    if shape[1] == 1:
        np.testing.assert_array_equal(ours, data_embeddings)
    else:
        np.testing.assert_allclose(ours, data_embeddings, atol=EMBED_ATOL, rtol=0)


def test_embedding_parameters_are_split_in_the_program(tiny_llama):
    """The pooler's state is split by the rules, and its lowered program takes q_proj split over the model axis."""
    mesh = model_mesh(1, 4)
    pooler = MeanPooler(tiny_llama[2], mesh=mesh)
    _assert_split_over_model(pooler.state, mesh)
    arrays = [split_rows(np.zeros((2, 16), dtype), mesh) for dtype in (np.int32, bool)]  # one batch of 2 rows
    text = pooler._program.lower(pooler.state, *arrays).as_text()
    assert _takes_q_proj_split(text, mesh)


def test_the_current_mesh_reaches_embeddings_and_generation(tiny_llama):
    """``delift run --mesh`` wraps a run in ``inference_mesh``: the embeddings and the decoder default to it."""
    mesh = model_mesh(2, 2)
    with inference_mesh(mesh):
        assert MeanPooler(tiny_llama[2]).mesh is mesh
        assert BatchDecoder(tiny_llama[2], GenerationConfig()).mesh is mesh
    assert BatchDecoder(tiny_llama[2], GenerationConfig()).mesh.axis_names == ("data",)


def test_sparse_kernel_on_a_model_mesh_picks_the_data_mesh_neighbours(tiny_llama, monkeypatch):
    """The sparse kernel on (2, 2) embeds on that mesh and keeps the neighbours that the data mesh of the same 4
    devices gives (what the kernel used before its embeddings had a model axis)."""
    _, _, model, tokenizer = tiny_llama
    pool = EXAMPLES[:5]
    # The embedding batches of the tests above (4 rows, MAX_LENGTH): their compiled programs serve this test too.
    config = KernelConfig(distance="rms", max_length=MAX_LENGTH, max_response_tokens=8, batch_size=4, top_k=2,
                          tokens_per_call=2048)
    reference = sparse.sparse_neighbours(model, tokenizer, build_pair_sequences(tokenizer, pool, pool, config), pool,
                                         pool, True, config, None, data_mesh())
    meshes = []
    real = sparse.mean_pooled_embeddings

    def spy(*args, **kwargs):
        meshes.append(kwargs["mesh"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sparse, "mean_pooled_embeddings", spy)
    mesh = model_mesh(2, 2)
    ours = utility_kernel(model, tokenizer, pool, config=config, mesh=mesh)
    assert meshes == [mesh]  # the embeddings ran on the job's mesh, model axis included
    assert reference.shape == (len(pool), 2) and len({tuple(sorted(row)) for row in reference.tolist()}) > 1
    np.testing.assert_array_equal(ours.indices, reference)
    assert np.all(np.isfinite(ours.utility))


# ------------------------------------------------------------------------------------------------- generation

@pytest.fixture(scope="module")
def prompts(tiny_llama):
    out = [prompt_ids(tiny_llama[3], DEFAULT_TEMPLATES.context_without_example(ex)) for ex in EXAMPLES[:5]]
    assert len({len(p) for p in out}) > 2, "prompts should be ragged"
    return out


def _generate(tiny_llama, prompts, mesh, **settings):
    config = GenerationConfig(**{"max_new_tokens": MAX_NEW, "max_prompt_tokens": MAX_PROMPT, "batch_size": 5,
                                 **settings})
    result = generate_ids(tiny_llama[2], prompts, config, tiny_llama[3].eos_token_id, mesh=mesh)
    return [t.tolist() for t in result.tokens], result.stopped.tolist()


@pytest.fixture(scope="module")
def one_device_greedy(tiny_llama, prompts):
    tokens, stopped = _generate(tiny_llama, prompts, data_mesh(jax.devices()[:1]))
    assert sum(map(len, tokens)) >= 3 * len(prompts), "the comparison would be vacuous"
    return tokens, stopped


def test_one_device_greedy_equals_full_forward_argmax(tiny_llama, prompts, one_device_greedy):
    from test_eval_generate import reference_greedy

    for i, prompt in enumerate(prompts):  # generation keeps the last MAX_PROMPT tokens of a longer prompt
        assert one_device_greedy[0][i] == reference_greedy(tiny_llama[2], prompt[-MAX_PROMPT:],
                                                           tiny_llama[3].eos_token_id, MAX_NEW), f"prompt {i}"


@pytest.mark.parametrize("shape", MESHES)
def test_greedy_tokens_on_a_model_mesh_equal_one_device(tiny_llama, prompts, one_device_greedy, shape):
    """One batch of the 5 prompts, padded to a multiple of the data size: 8 rows on (4, 1) (the last data index
    holds only filler rows), 6 on (2, 2), 5 on (1, 4)."""
    assert _generate(tiny_llama, prompts, model_mesh(*shape)) == one_device_greedy


def test_sampled_tokens_on_a_model_mesh_equal_one_device(tiny_llama, prompts):
    """Each row's key and settings travel with it through the padding and the split over ``data``. Batches of 3:
    the second (2 prompts and a filler row, padded to 4) leaves one data index of (2, 2) with filler rows only,
    done at once while the other still steps (the loop must keep every device stepping: it once deadlocked)."""
    settings = dict(temperature=1.5, top_p=0.95, min_p=0.01, seed=3, batch_size=3)
    reference = _generate(tiny_llama, prompts, data_mesh(jax.devices()[:1]), **settings)
    assert _generate(tiny_llama, prompts, model_mesh(2, 2), **settings) == reference
    assert _generate(tiny_llama, prompts, data_mesh(jax.devices()[:1]), **dict(settings, seed=4)) != reference


@pytest.mark.parametrize("shape, constrained", [((2, 2), 4), ((1, 4), 0)])
def test_decoder_splits_parameters_and_kv_cache(tiny_llama, shape, constrained):
    """The placed parameters are split by the rules, and the lowered decode program holds the stacked KV cache
    [layers, rows, t + max_new, kv_heads 2, head_dim 16] split over the KV heads where the model axis divides
    them: after the prefill and after each step's update (keys and values: 4); never with model=4 (lowering only)."""
    mesh = model_mesh(*shape)
    decoder = BatchDecoder(tiny_llama[2], GenerationConfig(max_new_tokens=MAX_NEW), mesh=mesh)
    _assert_split_over_model(decoder.state, mesh)
    rows = decoder.row_arrays(np.zeros((3, 16), np.int32), np.full(3, 16), eos_id=0)
    n_rows = {2: 4, 1: 3}[shape[0]]  # 3 rows padded to a multiple of the data size
    assert [len(a) for a in rows] == [n_rows] * len(rows) and not rows[2][3:].any()  # filler rows are inactive
    text = decoder._program.lower(decoder.state, *(split_rows(a, mesh) for a in rows)).as_text()
    pinned = (r'sharding_constraint %\S+ <@\w+, \[\{\}, \{\}, \{\}, \{"model"\}, \{\}\]> : '
              rf'tensor<2x{n_rows // shape[0]}x{16 + MAX_NEW}x2x16x')
    assert len(re.findall(pinned, text)) == constrained
    assert _takes_q_proj_split(text, mesh)
