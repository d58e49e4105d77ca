"""Metrics of generated responses against references, and of the model on held-out responses.

- ROUGE-1 / ROUGE-L F-measure (Google's ``rouge-score``; no stemming by default, as Hugging Face ``evaluate``).
- Embedding similarity: cosine of unit-norm sentence embeddings (all-MiniLM-L6-v2, see ``bert.py``).
- Held-out response NLL and perplexity, teacher forced in the training/scoring layout (DESIGN §1.1): the
  token-weighted mean of -log p over every scored token (response tokens + final EOS), perplexity = exp(NLL).
- Accuracy for short-answer targets: exact match after SQuAD-style normalization, "reference contained in the
  prediction", and multiple choice (a reference that is an option letter A-E is compared with the letter the
  prediction chooses, or with the option text when ``options`` are given).

Every function returns per-example values; ``summarize`` takes means.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Mapping, Sequence

import numpy as np

from delift_jax.data.tokenize import build_sequence, encode_ids
from delift_jax.errors import DataError

ROUGE_TYPES = ("rouge1", "rougeL")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise DataError("no predictions to evaluate")


def rouge_scores(predictions: Sequence[str], references: Sequence[str], *,
                 use_stemmer: bool = False) -> dict[str, np.ndarray]:
    """Per-example ROUGE-1 and ROUGE-L F-measures: ``{"rouge1": [n], "rougeL": [n]}``."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {kind: np.array([s[kind].fmeasure for s in scores], np.float64) for kind in ROUGE_TYPES}


def embedding_similarity(encoder, predictions: Sequence[str], references: Sequence[str],
                         progress: bool = False) -> np.ndarray:
    """Per-example cosine similarity of the sentence embeddings of prediction and reference."""
    _check_pairs(predictions, references)
    embeddings = encoder.encode(list(predictions) + list(references), progress=progress)
    n = len(predictions)
    return np.sum(embeddings[:n].astype(np.float64) * embeddings[n:], axis=1)


# ------------------------------------------------------------------------------------------------ NLL / PPL

@dataclasses.dataclass(frozen=True)
class NLLResult:
    """Held-out negative log-likelihood. ``nll``: token-weighted mean; ``per_example``: each example's mean."""

    nll: float
    perplexity: float
    per_example: np.ndarray
    n_tokens: np.ndarray
    n_truncated: int


def nll_from_logprobs(logprobs: Sequence[np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    """(token-weighted NLL, per-example mean NLL, per-example token counts) from per-token log-probabilities."""
    counts = np.array([len(lp) for lp in logprobs], np.int64)
    if counts.sum() == 0:
        raise DataError("no scored tokens: every response is empty")
    totals = np.array([-np.sum(np.asarray(lp, np.float64)) for lp in logprobs])
    per_example = np.where(counts > 0, totals / np.maximum(counts, 1), 0.0)
    return float(totals.sum() / counts.sum()), per_example, counts


def response_nll(model, tokenizer, contexts: Sequence[str], responses: Sequence[str], config=None, *,
                 progress: bool = False) -> NLLResult:
    """NLL of each ``response`` after its ``context`` in the layout ``context + [eos] + response + [eos]``.

    config: a ``ScoringConfig`` (max_length, batch size; ``max_response_tokens`` caps scored tokens).
    """
    from delift_jax.scoring import ScoringConfig, TeacherForcedScorer

    _check_pairs(contexts, responses)
    config = config or ScoringConfig(max_length=1024)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; response NLL needs one as separator and terminator")
    sequences = [build_sequence(encode_ids(tokenizer, c), encode_ids(tokenizer, r), int(eos),
                                max_length=config.max_length, max_response_tokens=config.max_response_tokens,
                                what=f"example {i}")
                 for i, (c, r) in enumerate(zip(contexts, responses))]
    logprobs = TeacherForcedScorer(model, config).logprobs(sequences, progress=progress)
    nll, per_example, counts = nll_from_logprobs(logprobs)
    return NLLResult(nll=nll, perplexity=float(np.exp(nll)), per_example=per_example, n_tokens=counts,
                     n_truncated=sum(s.context_dropped > 0 for s in sequences))


# -------------------------------------------------------------------------------------------------- accuracy

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_LETTER_PATTERNS = (
    re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?:?\s*\(?([A-E])\)?(?![A-Za-z])"),
    re.compile(r"^\s*\(?([A-E])(?:[.):]|\s*$)"),
    re.compile(r"\(([A-E])\)"),
)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and English articles, collapse whitespace (SQuAD's normalization)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def contains_answer(prediction: str, reference: str) -> bool:
    """The normalized reference appears in the normalized prediction as whole words."""
    ref = normalize_answer(reference)
    return bool(ref) and f" {ref} " in f" {normalize_answer(prediction)} "


def chosen_letter(prediction: str, options: Mapping[str, str] | None = None) -> str | None:
    """The option letter a prediction chooses: an explicit letter ("B", "(B)", "B) ...", "Answer: B"), else the
    option whose text the prediction matches exactly or contains (only if exactly one does)."""
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(prediction)
        if match:
            return match.group(1).upper()
    if options:
        exact = [k for k, v in options.items() if exact_match(prediction, v)]
        if len(exact) == 1:
            return exact[0].upper()
        contained = [k for k, v in options.items() if contains_answer(prediction, v)]
        if len(contained) == 1:
            return contained[0].upper()
    return None


def is_option_letter(reference: str) -> bool:
    return bool(re.fullmatch(r"\s*\(?[A-Ea-e]\)?[.)]?\s*", reference))


def answer_correct(prediction: str, reference: str, options: Mapping[str, str] | None = None) -> bool:
    """Multiple choice when the reference is an option letter, else exact match (normalized)."""
    if is_option_letter(reference):
        return chosen_letter(prediction, options) == re.sub(r"[^A-Ea-e]", "", reference).upper()
    return exact_match(prediction, reference)


def accuracy_scores(predictions: Sequence[str], references: Sequence[str],
                    options: Sequence[Mapping[str, str] | None] | None = None) -> dict[str, np.ndarray]:
    """Per-example ``accuracy`` (MC letter or exact match) and ``contains`` (reference within prediction)."""
    _check_pairs(predictions, references)
    options = options or [None] * len(predictions)
    return {
        "accuracy": np.array([answer_correct(p, r, o) for p, r, o in zip(predictions, references, options)], float),
        "contains": np.array([contains_answer(p, r) for p, r in zip(predictions, references)], float),
    }


def summarize(per_example: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means of per-example values (NaN entries, e.g. unparsed judge scores, are left out)."""
    out = {}
    for name, values in per_example.items():
        values = np.asarray(values, np.float64)
        finite = values[np.isfinite(values)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
    return out
