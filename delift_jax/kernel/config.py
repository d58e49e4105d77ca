"""Configuration of a utility-kernel run."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.errors import DataError
from delift_jax.kernel.normalize import NORMALIZATIONS

DISTANCES = ("rms", "pmi")

NEIGHBOURS = ("model", "encoder")

UTILITIES = ("exact", "surrogate")
DEFAULT_SURROGATE_PAIRS = 2000
MIN_SURROGATE_PAIRS = 8
SURROGATE_VERSION = 1  # the exact sample's design: a store sampled by another version is refused
# Settings of the surrogate mode only: in the exact mode they stay at these values and out of the fingerprint, so
# an exact store's identity is what it was before the surrogate existed.
SURROGATE_FIELDS = {"utility": "exact", "surrogate_pairs": None, "surrogate_seed": 0, "refine_rounds": 3,
                    "refine_pairs": None}


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """What the kernel computes and how the work is batched.

    distance: ``pmi`` (the default: U = mean_t log p(i | j) - mean_t log p(i | none), the conditional pointwise
        mutual information), chosen on the evidence of ``scripts/bench_recovery.py`` (3 seeds x 4 built-in targets:
        task precision at 10% with fl2mi 1.00 +- 0.00 against 0.67 +- 0.24 for rms; docs/evidence.md), or
        ``rms`` (U = d_rms(i | none) - d_rms(i | j), d_rms = sqrt(mean_t (1 - p_t)^2): the paper's metric;
        ``distance="rms"``, ``--distance rms``). Both are stored in every kernel store; the choice is applied when
        the blocks are assembled.
    normalization: ``minmax`` (global, the authors' default), ``clip_minmax`` (max(U, 0) first, as the paper's
        text says), ``exp`` (exp(U)) or ``none``. Always global over the whole kernel, never per block.
    exclude_diagonal: square kernels only; leave U[i, i] out of the normalization and set K[i, i] = 0, so an
        example's use as its own demonstration (which dominates) does not squeeze the off-diagonal structure.
    max_length: longest sequence; longer contexts are truncated from the left (scored tokens never are).
    max_response_tokens: score only the first N response tokens (None: all).
    batch_size: sequences per device per call when the sparse mode embeds examples.
    tokens_per_call: tokens the pair engine packs into one call per device, for pairs and for the targets without
        an example (None: sized from the device's free memory; 4096 on CPUs).
    block_pairs: pairs per stored block (the unit of crash-safe progress); None: chosen from the plan for about a
        minute of work per block (``estimate.choose_block_pairs``), fixed for the store when it is created.
    top_k: sparse mode: for each target only its top_k most similar candidates get a utility (None: dense).
    neighbours: the sparse mode's similarity: "model" (mean-pooled final hidden states of the scoring model) or
        "encoder" (the built-in sentence encoder, all-MiniLM-L6-v2, on prompt + response). In the surrogate mode
        the same embeddings are also the surrogate's features (dense or sparse).
    utility: ``exact`` (the default: every pair the kernel holds is computed) or ``surrogate`` (exact U on a
        stratified sample of ``surrogate_pairs`` pairs, a small network trained on them predicts the rest;
        ``kernel/surrogate.py``, docs/surrogate.md).
    surrogate_pairs: the surrogate mode's exact sample, a fixed number of pairs (None: 2,000; not a fraction of n).
    surrogate_seed: the sample's rows and pairs and the network's initialization (default 0).
    refine_rounds: DELIFT's selection on a surrogate kernel: at most this many rounds of computing the picks'
        entries exactly and selecting again (0: none); ``methods/refine.py``.
    refine_pairs: the most exact pairs one refinement round adds per kernel (None: half of ``surrogate_pairs``);
        the entries most likely to decide the objective first.
    """

    templates: Templates = DEFAULT_TEMPLATES
    distance: str = "pmi"
    normalization: str = "minmax"
    exclude_diagonal: bool = False
    max_length: int = 2048
    max_response_tokens: int | None = None
    batch_size: int = 8
    block_pairs: int | None = None
    logits_chunk: int = 512
    top_k: int | None = None
    tokens_per_call: int | None = None
    neighbours: str = "model"
    utility: str = "exact"
    surrogate_pairs: int | None = None
    surrogate_seed: int = 0
    refine_rounds: int = 3
    refine_pairs: int | None = None

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise DataError(f"distance {self.distance!r} is unknown; choose one of {', '.join(DISTANCES)}")
        if self.normalization not in NORMALIZATIONS:
            raise DataError(f"normalization {self.normalization!r} is unknown; choose one of "
                            f"{', '.join(NORMALIZATIONS)}")
        if self.max_length < 4:
            raise DataError(f"max_length={self.max_length} is too small; use at least 4")
        for name in ("max_length", "batch_size", "block_pairs", "logits_chunk"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DataError(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_response_tokens is not None and self.max_response_tokens < 1:
            raise DataError(f"max_response_tokens={self.max_response_tokens} must be at least 1 (or None for all)")
        if self.tokens_per_call is not None and self.tokens_per_call < 1:
            raise DataError(f"tokens_per_call={self.tokens_per_call} must be at least 1 (or None to size it from "
                            "the device's memory)")
        if self.neighbours not in NEIGHBOURS:
            raise DataError(f"neighbours {self.neighbours!r} is unknown; choose one of {', '.join(NEIGHBOURS)}")
        if self.top_k is not None and self.top_k < 1:
            raise DataError(f"top_k={self.top_k} must be at least 1 (or None for a dense kernel)")
        self._check_surrogate()

    def _check_surrogate(self) -> None:
        if self.utility not in UTILITIES:
            raise DataError(f"utility {self.utility!r} is unknown; choose one of {', '.join(UTILITIES)}")
        if self.utility == "exact":
            given = [f for f, default in SURROGATE_FIELDS.items() if getattr(self, f) != default]
            if given:
                raise DataError(f"{', '.join(given)} apply to the surrogate utility only; add utility=\"surrogate\" "
                                "(--utility surrogate) or leave them out")
            return
        if self.surrogate_pairs is not None and self.surrogate_pairs < MIN_SURROGATE_PAIRS:
            raise DataError(f"surrogate_pairs={self.surrogate_pairs} is too small; use at least "
                            f"{MIN_SURROGATE_PAIRS} exact pairs")
        if self.surrogate_seed < 0:
            raise DataError(f"surrogate_seed={self.surrogate_seed} must be 0 or more")
        if self.refine_rounds < 0:
            raise DataError(f"refine_rounds={self.refine_rounds} must be 0 (no refinement) or more")
        if self.refine_pairs is not None and self.refine_pairs < 1:
            raise DataError(f"refine_pairs={self.refine_pairs} must be at least 1 (or None for half the sample)")

    @property
    def n_surrogate_pairs(self) -> int:
        """The surrogate's exact sample size (``surrogate_pairs`` or its default)."""
        return DEFAULT_SURROGATE_PAIRS if self.surrogate_pairs is None else int(self.surrogate_pairs)

    @property
    def n_refine_pairs(self) -> int:
        """The most exact pairs one refinement round adds per kernel."""
        return max(1, self.n_surrogate_pairs // 2) if self.refine_pairs is None else int(self.refine_pairs)

    def compute_fingerprint(self, extra: dict | None = None) -> str:
        """Hash of every setting that changes the stored numbers (not distance/normalization: those are applied
        when the blocks are assembled, so one store serves every choice of them)."""
        fields = dataclasses.asdict(self)
        # In the sparse mode exclude_diagonal changes which pairs are planned (the neighbours skip the diagonal).
        # Dense exact stores compute every pair whatever exclude_diagonal says; a surrogate's sample depends on it.
        for name in ("distance", "normalization") + (("exclude_diagonal",) if self.top_k is None
                                                      and self.utility == "exact" else ()):
            fields.pop(name)
        if (self.top_k is None and self.utility == "exact") or self.neighbours == "model":
            fields.pop("neighbours")  # default or unused: fingerprints of older stores hold none
        for name in SURROGATE_FIELDS if self.utility == "exact" else ("refine_rounds", "refine_pairs"):
            fields.pop(name)  # refinement adds exact entries to a store; it does not change its numbers
        if self.utility == "surrogate" and self.surrogate_seed == 0:
            fields.pop("surrogate_seed")  # the default: fingerprints of stores made before the seed hold none
        if self.utility == "surrogate":
            fields.update(surrogate_pairs=self.n_surrogate_pairs, surrogate_version=SURROGATE_VERSION)
        fields.update(extra or {})
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
