"""In-context evaluation as in the DELIFT paper: before each test prompt, the k = 5 examples of the selected subset
nearest to it (cosine similarity of sentence embeddings of the prompts) are shown as demonstrations.

Prompt format: the authors' with-example template (DESIGN §1.1) extended to k demonstrations, in order of
increasing similarity so the nearest sits next to the query::

    "Instruction:\\n{I}\\n\\n\\nExample:\\n{prompt_1}\\n{response_1}\\n\\n\\nExample:\\n{prompt_2}\\n{response_2}..."
    "\\n\\n\\nQuery:\\n{prompt}\\n"

With one demonstration this is exactly ``Templates.context_with_example`` (instruction I1); with several the
instruction speaks of "examples" (``MULTI_EXAMPLE_INSTRUCTION``). The generated response follows
``context + [eos]`` as everywhere else. A demonstration identical to the test example (same prompt and response)
is never used for it (no leakage even when the pool and the test set overlap).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.errors import DataError

MULTI_EXAMPLE_INSTRUCTION = ("Use the following examples as a guide to answer the query in the same format and "
                             "style, providing a clear and concise response.")
DEFAULT_K = 5


def nearest_demonstrations(test_nd: np.ndarray, pool_md: np.ndarray, k: int = DEFAULT_K,
                           exclude_nm: np.ndarray | None = None) -> np.ndarray:
    """``[n, k]`` pool indices, most similar first, by cosine similarity (ties: lower index first).

    exclude_nm: True where pool item m must not serve test item n. Rows with fewer than k allowed items are
    an error (pass a smaller k).
    """
    test = np.asarray(test_nd, np.float64)
    pool = np.asarray(pool_md, np.float64)
    if test.ndim != 2 or pool.ndim != 2 or test.shape[1] != pool.shape[1]:
        raise DataError(f"embeddings must be 2-D with equal widths; got {test.shape} and {pool.shape}")
    if k < 1:
        raise DataError(f"k={k} demonstrations: need at least 1")
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims_nm = unit(test) @ unit(pool).T
    if exclude_nm is not None:
        sims_nm = np.where(exclude_nm, -np.inf, sims_nm)
    allowed = np.isfinite(sims_nm).sum(axis=1)
    if allowed.min(initial=k) < k:
        raise DataError(f"the demonstration pool offers only {int(allowed.min())} usable examples for some test "
                        f"example; k={k} needs at least {k}")
    # Stable sort on -similarity keeps lower indices first among equal similarities.
    return np.argsort(-sims_nm, axis=1, kind="stable")[:, :k].astype(np.int64)


def icl_context(target: Example, demonstrations: Sequence[Example], templates: Templates = DEFAULT_TEMPLATES) -> str:
    """The with-examples context for ``target`` (``demonstrations`` given most similar first)."""
    if not demonstrations:
        return templates.context_without_example(target)
    ordered = list(demonstrations)[::-1]  # nearest last, next to the query
    instruction = templates.example_instruction if len(ordered) == 1 else MULTI_EXAMPLE_INSTRUCTION
    text = templates.demonstration.format(instruction=instruction, prompt=ordered[0].prompt,
                                          response=ordered[0].response)
    for example in ordered[1:]:
        text += f"\n\n\nExample:\n{example.prompt}\n{example.response}"
    return text + templates.query_text(target)


def same_example_mask(test: Sequence[Example], pool: Sequence[Example]) -> np.ndarray:
    """``[n, m]`` True where the pool example equals the test example (prompt and response)."""
    index: dict[Example, list[int]] = {}
    for j, ex in enumerate(pool):
        index.setdefault(ex, []).append(j)
    mask = np.zeros((len(test), len(pool)), bool)
    for i, ex in enumerate(test):
        mask[i, index.get(ex, [])] = True
    return mask


def icl_contexts(encoder, test: Sequence[Example], pool: Sequence[Example], k: int = DEFAULT_K,
                 templates: Templates = DEFAULT_TEMPLATES, progress: bool = False) -> tuple[list[str], np.ndarray]:
    """Contexts with the k nearest pool examples for each test example, and the chosen indices ``[n, k]``."""
    if not test:
        raise DataError("no test examples for ICL evaluation")
    if not pool:
        raise DataError("the demonstration pool (selected subset) is empty")
    embeddings = encoder.encode([ex.prompt for ex in test] + [ex.prompt for ex in pool], progress=progress)
    chosen = nearest_demonstrations(embeddings[:len(test)], embeddings[len(test):], k, same_example_mask(test, pool))
    contexts = [icl_context(ex, [pool[j] for j in row], templates) for ex, row in zip(test, chosen)]
    return contexts, chosen


def subset_from_indices(pool: Sequence[Example], indices: Sequence[int]) -> list[Example]:
    """The selected examples; indices must be distinct and inside the pool."""
    indices = np.asarray(indices).reshape(-1)
    if indices.size == 0:
        raise DataError("the subset indices are empty")
    if not np.issubdtype(indices.dtype, np.integer):
        raise DataError(f"subset indices must be integers, got {indices.dtype}")
    if indices.min() < 0 or indices.max() >= len(pool):
        raise DataError(f"subset indices range {indices.min()}..{indices.max()} but the pool has {len(pool)} "
                        "examples; pass the pool the selection was made from")
    if len(np.unique(indices)) != indices.size:
        raise DataError("subset indices repeat an example")
    return [pool[int(i)] for i in indices]
