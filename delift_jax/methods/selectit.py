"""SelectIT (Liu et al., 2024): the model rates each example itself, under several rating prompts; keep the TOP k.

For example x and rating prompt r (K_p prompts, default the 5 below), the model reads the prompt and we take its
next-token distribution at the answer position, restricted to the rating tokens "1".."5" (a rating's
probability sums the single-token spellings "d" and " d" the tokenizer has):

    P'_k = P_k / Σ_j P_j,  k = 1..5                                                   (renormalized)
    token level:    S_base = argmax_k P'_k,   S_token = S_base · (1 / (5 − 1)) · Σ_i |P'_i − P'_{S_base}|
    sentence level: S_sent = mean_r S_token,r / (1 + α · std_r S_token,r),   α = 0.2 (population std)

S_token weighs the model's preferred rating by how decisively it prefers it (the paper's token-level
uncertainty); S_sent rewards ratings that agree across prompts (the sentence-level uncertainty). The paper's
model-level step averages S_sent over several models weighted by their parameter counts; with one model it is
S_sent itself. ``token_score="expected"`` replaces S_token by the expected rating Σ_k k·P'_k (an option, not
the paper). Keep the k examples with the HIGHEST S_sent (ties: lower index) — the original repository's port kept
the lowest 30%, which is wrong (DESIGN §1.4).

Prompts are plain text (no chat template, as everywhere in this package): a rating instruction, the example's
prompt and response, then ``"Score (1-5):"``. An over-long example loses tokens from the start of its
prompt-and-response body (the rating instruction and the score cue are kept); ``info["n_truncated"]`` counts them.

Options: ``SelectItOptions``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.data.tokenize import bucket_for, encode_ids, length_ladder
from delift_jax.errors import DataError
from delift_jax.methods.base import (MethodOptions, MethodSelection, budget_count, check_at_least, check_choice,
                                     check_inputs, need_model, top_k)

TOKEN_SCORES = ("paper", "expected")
N_RATINGS = 5
DEFAULT_ALPHA = 0.2
RATING_PROMPTS = (
    "Rate how well the response follows the instruction, from 1 (poor) to 5 (excellent).",
    "Evaluate the quality of the response to the instruction below on a scale of 1 to 5, where 5 is the best.",
    "As an expert reviewer, score the response from 1 to 5 for its helpfulness, accuracy and clarity.",
    "How useful is this instruction and response for teaching an assistant? Answer with a number from 1 to 5.",
    "Judge whether the response correctly and completely answers the instruction. Give a score from 1 (not at "
    "all) to 5 (fully).",
)


@dataclasses.dataclass(frozen=True)
class SelectItOptions(MethodOptions):
    """prompts: rating instructions (K_p of them); alpha: α of the sentence level; token_score: paper | expected;
    max_length / batch_size: of the rating prompts; distributions: precomputed P' of shape [n, K_p, 5] (e.g. from
    another run; skips the model)."""

    prompts: tuple = RATING_PROMPTS
    alpha: float = DEFAULT_ALPHA
    token_score: str = "paper"
    max_length: int = 1024
    batch_size: int = 8
    distributions: object = None

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not self.prompts:
            raise DataError("selectit: needs at least one rating prompt")
        check_choice("selectit", "token_score", self.token_score, TOKEN_SCORES)
        check_at_least("selectit", "max_length", self.max_length)
        check_at_least("selectit", "batch_size", self.batch_size)


BODY = "\n\nInstruction:\n{prompt}\n\nResponse:\n{response}"
CUE = "\n\nScore (1-5):"


def token_level_scores(dist: np.ndarray, mode: str = "paper") -> np.ndarray:
    """S_token for rating distributions ``[..., 5]`` (renormalized here; see the module docstring)."""
    p = np.asarray(dist, dtype=np.float64)
    total = p.sum(-1, keepdims=True)
    if np.any(total <= 0) or not np.all(np.isfinite(p)):
        raise DataError("rating distributions must be finite with a positive total")
    p = p / total
    ratings = np.arange(1, N_RATINGS + 1, dtype=np.float64)
    if mode == "expected":
        return (p * ratings).sum(-1)
    if mode != "paper":
        raise DataError(f"selectit: token_score {mode!r} is unknown; choose paper or expected")
    base = np.argmax(p, axis=-1)  # ties: the lower rating
    p_base = np.take_along_axis(p, base[..., None], axis=-1)
    return (base + 1.0) * np.abs(p - p_base).sum(-1) / (N_RATINGS - 1)


def sentence_level_scores(token_scores: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """S_sent = mean over prompts / (1 + α · std over prompts), for ``token_scores`` of shape [n, K_p]."""
    s = np.asarray(token_scores, dtype=np.float64)
    return s.mean(-1) / (1.0 + float(alpha) * s.std(-1))


def rating_token_ids(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """ids ``[5, m]`` and mask ``[5, m]``: the single-token spellings of each rating ("d" and " d")."""
    spellings = []
    for d in range(1, N_RATINGS + 1):
        ids = sorted({ids[0] for text in (str(d), f" {d}") if len(ids := encode_ids(tokenizer, text)) == 1})
        if not ids:
            raise DataError(f"selectit: the tokenizer has no single token for the rating {d}")
        spellings.append(ids)
    m = max(len(s) for s in spellings)
    ids = np.zeros((N_RATINGS, m), np.int32)
    mask = np.zeros((N_RATINGS, m), bool)
    for k, s in enumerate(spellings):
        ids[k, :len(s)], mask[k, :len(s)] = s, True
    return ids, mask


@functools.partial(jax.jit, static_argnums=0)
def _rating_probs(graphdef, state, tokens_bt, valid_bt, last_b, ids_km, mask_km):
    model = nnx.merge(graphdef, state)
    hidden_btd, _ = model(tokens_bt, valid_bt=valid_bt)
    hidden_bd = jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]
    probs_bv = jax.nn.softmax(model.logits(hidden_bd).astype(jnp.float32), axis=-1)
    picked_bkm = probs_bv[:, ids_km]
    return jnp.sum(jnp.where(mask_km[None], picked_bkm, 0.0), axis=-1)


def rating_sequences(tokenizer, pool, prompts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of every (example, prompt) pair, example-major; and how many were truncated."""
    cue = encode_ids(tokenizer, CUE)
    out, truncated = [], 0
    for example in pool:
        body = encode_ids(tokenizer, BODY.format(prompt=example.prompt.strip(), response=example.response.strip()))
        for prompt in prompts:
            head = encode_ids(tokenizer, prompt)
            room = max_length - len(head) - len(cue)
            if room < 1:
                raise DataError(f"selectit: max_length={max_length} leaves no room for the example after the rating "
                                "prompt; raise max_length")
            cut = body[-room:] if len(body) > room else body
            truncated += len(cut) < len(body)
            out.append(head + cut + cue)
    return out, truncated


def rating_distributions(model, tokenizer, pool, prompts: Sequence[str] = RATING_PROMPTS, *, max_length: int = 1024,
                         batch_size: int = 8) -> tuple[np.ndarray, int]:
    """(P' of shape [n, K_p, 5] renormalized over the ratings, number of truncated prompts)."""
    sequences, truncated = rating_sequences(tokenizer, pool, prompts, max_length)
    ids_km, mask_km = rating_token_ids(tokenizer)
    graphdef, state = nnx.split(model)
    ladder = length_ladder(max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    probs = np.zeros((len(sequences), N_RATINGS), np.float64)
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        length = bucket_for(max(len(sequences[i]) for i in rows), ladder)
        tokens = np.full((batch_size, length), pad_id, np.int32)
        valid = np.zeros((batch_size, length), bool)
        last = np.zeros(batch_size, np.int32)
        for r, i in enumerate(rows):
            tokens[r, :len(sequences[i])] = sequences[i]
            valid[r, :len(sequences[i])] = True
            last[r] = len(sequences[i]) - 1
        out = np.asarray(_rating_probs(graphdef, state, tokens, valid, last, ids_km, mask_km), np.float64)
        probs[rows] = out[:len(rows)]
    if not np.all(np.isfinite(probs)) or np.any(probs.sum(-1) <= 0):
        raise DataError("selectit: the model gave non-finite or zero probabilities to every rating token")
    probs /= probs.sum(-1, keepdims=True)
    return probs.reshape(len(pool), len(prompts), N_RATINGS), truncated


def selectit_selection(*, pool, budget, use_case="instruction", targets=None, existing=None, model=None,
                       tokenizer=None, seed: int = 0, options: SelectItOptions = SelectItOptions()) -> MethodSelection:
    check_inputs("selectit", pool, use_case, targets, existing)
    k = budget_count(budget, len(pool), "selectit")
    dist, truncated = options.distributions, 0
    if dist is None:
        need_model("selectit", model, tokenizer)
        dist, truncated = rating_distributions(model, tokenizer, pool, options.prompts,
                                               max_length=int(options.max_length), batch_size=int(options.batch_size))
    dist = np.asarray(dist, dtype=np.float64)
    if dist.ndim != 3 or dist.shape[0] != len(pool) or dist.shape[2] != N_RATINGS:
        raise DataError(f"selectit: distributions have shape {dist.shape}; expected ({len(pool)}, K, {N_RATINGS})")
    token_scores = token_level_scores(dist, options.token_score)
    sentence_scores = sentence_level_scores(token_scores, float(options.alpha))
    indices = top_k(sentence_scores, k)
    info = {"method": "selectit", "budget": k, "use_case": use_case, "seed": int(seed), "alpha": float(options.alpha),
            "token_score": options.token_score, "n_prompts": int(dist.shape[1]), "n_truncated": int(truncated),
            "keep": "top", "fine_tune": True}
    return MethodSelection(indices, sentence_scores[indices], info,
                           {"distributions": dist, "token_scores": token_scores, "sentence_scores": sentence_scores})
