"""Planted low-quality examples: a pool of clean examples from several built-in sources plus corrupted ones whose
kind is known, so that a selection can be asked whether it avoids them (and, for continual tuning, whether it finds
what is new without taking the broken part of it).

Noise kinds (each built from a base example of one source, whose clean original never enters the pool):

* ``swapped``: the response of a base example of *another* source (rows misaligned when datasets were merged);
* ``truncated``: the response cut to its first third of words (half a word for one-word responses), as a bad
  length cap or a broken export leaves it;
* ``repeated``: one boilerplate response, verbatim, for unrelated prompts (``REPEATED_RESPONSE``);
* ``contradictory``: a wrong answer in the right format: BoolQ's True/False flipped, another lettered option of a
  multiple-choice prompt, an ASDiv number changed (unit kept), otherwise another example's response of the same
  source (e.g. NQ-open: another question's answer).

One seeded draw per seed (``noisy_mixture``): per source, disjoint parts — ``clean_per_source`` clean examples,
``per_kind`` base examples per noise kind, ``test_per_source`` clean held-out examples. ``instruction_pool`` and
``continual_split`` cut pools out of it, so one square kernel over ``NoisyMixture.examples`` serves every pool
(U[i, j] depends only on examples i and j).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from delift_jax.data.records import Example
from delift_jax.errors import DataError
from delift_jax.report.known_answer import SOURCES, usable_examples

NOISE_KINDS = ("swapped", "truncated", "repeated", "contradictory")
CLEAN = "clean"
REPEATED_RESPONSE = " I am not able to answer that question."
_OPTION = re.compile(r"^([A-Z])\. (.+)$", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class NoisyMixture:
    """examples: the clean part of every source, then the corrupted ones, in a seeded shuffled order;
    source: the source index of each example (of its prompt); kind: ``"clean"`` or a noise kind per example;
    test: source name -> clean held-out examples (never in ``examples``)."""

    sources: tuple
    examples: list
    source: np.ndarray
    kind: np.ndarray
    test: dict

    @property
    def low_quality(self) -> np.ndarray:
        return self.kind != CLEAN


def truncated(response: str) -> str:
    """The first third of the words (at least one); a one-word response keeps the first half of its characters."""
    words = response.split()
    if len(words) > 1:
        return " " + " ".join(words[:max(1, len(words) // 3)])
    word = words[0] if words else response
    return " " + word[:max(1, len(word) // 2)]


def contradictory(example: Example, rng: np.random.Generator, same_source: Sequence[Example]) -> str:
    """A wrong answer in the right format (see the module docstring)."""
    answer = example.response.strip()
    if answer in ("True", "False"):
        return " False" if answer == "True" else " True"
    options = _OPTION.findall(example.prompt)
    if options and any(f"{letter}. {text}" == answer for letter, text in options):
        others = [f"{letter}. {text}" for letter, text in options if f"{letter}. {text}" != answer]
        return " " + others[int(rng.integers(len(others)))]
    number = _NUMBER.search(answer)
    if number is not None:
        value = float(number.group())
        delta = int(rng.integers(1, 6)) * (1 if value < 6 or rng.random() < 0.5 else -1)
        changed = f"{value + delta:g}"
        return " " + answer[:number.start()] + changed + answer[number.end():]
    others = [e.response for e in same_source if e.response.strip() != answer]
    if not others:
        raise DataError("contradictory noise needs another response of the same source")
    return others[int(rng.integers(len(others)))]


def corrupt(kind: str, bases: Sequence[Example], source: Sequence[int], rng: np.random.Generator,
            same_source: Sequence[Sequence[Example]]) -> list[Example]:
    """Corrupted copies of ``bases`` (``source[i]``: the source index of base i) for one noise kind.

    swapped: bases taken in source-interleaved order each take the response of the next one (another source's
    whenever there are several). contradictory: ``same_source[s]`` are the examples of source s another response
    may be drawn from where no format rule applies."""
    if kind == "swapped":
        rank = {}
        position = []
        for i, s in enumerate(source):
            rank[s] = rank.get(s, -1) + 1
            position.append((rank[s], s, i))
        order = [i for _, _, i in sorted(position)]
        donor = dict(zip(order, order[1:] + order[:1]))
        return [Example(b.prompt, bases[donor[i]].response) for i, b in enumerate(bases)]
    if kind == "truncated":
        return [Example(b.prompt, truncated(b.response)) for b in bases]
    if kind == "repeated":
        return [Example(b.prompt, REPEATED_RESPONSE) for b in bases]
    if kind == "contradictory":
        return [Example(b.prompt, contradictory(b, rng, same_source[s])) for b, s in zip(bases, source)]
    raise DataError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}")


def plant_noise(examples: Sequence[Example], fraction: float, seed: int, kinds: Sequence[str] = NOISE_KINDS
                ) -> tuple[list[Example], np.ndarray]:
    """A copy of one dataset's ``examples`` with ``round(fraction · n)`` of them corrupted, the kinds in turn:
    (examples, kind per example). Which examples, and the order of kinds, are seeded. An example whose corrupted
    response happens to equal its own (a swap between two equal responses) stays labelled clean."""
    n = len(examples)
    chosen = np.random.default_rng([seed, 13]).permutation(n)[:int(round(fraction * n))]
    rng = np.random.default_rng([seed, 17])
    out, kind_of = list(examples), np.full(n, CLEAN, dtype=object)
    for k, kind in enumerate(kinds):
        which = chosen[k::len(kinds)]
        for i, example in zip(which, corrupt(kind, [examples[i] for i in which], [0] * len(which), rng,
                                             [examples])):
            out[i], kind_of[i] = example, kind if example.response != examples[i].response else CLEAN
    return out, kind_of.astype(str)


def noisy_mixture(seed: int, sources: Sequence[str] = SOURCES, *, clean_per_source: int = 16, per_kind: int = 2,
                  test_per_source: int = 8, kinds: Sequence[str] = NOISE_KINDS, max_prompt_chars: int = 240,
                  loader: Callable | None = None) -> NoisyMixture:
    """One seeded draw: per source ``clean_per_source`` clean examples, ``per_kind`` corrupted ones of every kind
    (each from its own base example) and ``test_per_source`` held-out clean examples; all parts disjoint."""
    if len(sources) < 2:
        raise DataError("a planted-noise mixture needs at least 2 sources (swapped responses come from another one)")
    need = clean_per_source + per_kind * len(kinds) + test_per_source
    clean, bases, test = [], {kind: [] for kind in kinds}, {}
    for s, name in enumerate(sources):
        examples = usable_examples(name, max_prompt_chars, loader)
        if len(examples) < need:
            raise DataError(f"{name}: only {len(examples)} usable examples; a planted-noise draw needs {need}")
        order = np.random.default_rng([seed, s, 7]).permutation(len(examples))[:need]
        drawn = [examples[i] for i in order]
        clean.append(drawn[:clean_per_source])
        for k, kind in enumerate(kinds):
            start = clean_per_source + k * per_kind
            bases[kind].append(drawn[start:start + per_kind])
        test[name] = drawn[clean_per_source + per_kind * len(kinds):]
    rng = np.random.default_rng([seed, len(sources), 7])
    examples, source, kind_of = [], [], []
    for s in range(len(sources)):
        examples += clean[s]
        source += [s] * len(clean[s])
        kind_of += [CLEAN] * len(clean[s])
    for kind in kinds:
        base_source = [s for s in range(len(sources)) for _ in bases[kind][s]]
        examples += corrupt(kind, [b for part in bases[kind] for b in part], base_source, rng, clean)
        source += base_source
        kind_of += [kind] * len(base_source)
    # Shuffled, so that greedy's lowest-index tie-break favours no part.
    shuffle = rng.permutation(len(examples))
    return NoisyMixture(tuple(sources), [examples[i] for i in shuffle], np.asarray(source, np.int64)[shuffle],
                        np.asarray(kind_of)[shuffle], test)


def instruction_pool(mixture: NoisyMixture, noise: str, seed: int, clean_per_source: int = 6,
                     noisy: int | None = None) -> np.ndarray:
    """Indices into ``mixture.examples`` of an instruction-tuning pool: ``clean_per_source`` clean examples of every
    source and the low-quality part: every example of one kind (``noise`` a kind), every low-quality example of
    one source (``noise`` a source name), or ``noisy`` (default: as many as one kind has) spread evenly over the
    kinds and sources (``noise="mixed"``). Sorted (the mixture is already shuffled)."""
    names = NOISE_KINDS + ("mixed",) + tuple(mixture.sources)
    if noise not in names:
        raise DataError(f"unknown noise {noise!r}; choose one of {', '.join(names)}")
    rng = np.random.default_rng([seed, 11, names.index(noise)])
    picked = []
    for s in range(len(mixture.sources)):
        own = np.flatnonzero((mixture.source == s) & (mixture.kind == CLEAN))
        if len(own) < clean_per_source:
            raise DataError(f"the mixture has {len(own)} clean examples of source {s}; the pool needs "
                            f"{clean_per_source}")
        picked += rng.choice(own, clean_per_source, replace=False).tolist()
    if noise in NOISE_KINDS:
        picked += np.flatnonzero(mixture.kind == noise).tolist()
    elif noise in mixture.sources:
        picked += np.flatnonzero((mixture.kind != CLEAN) & (mixture.source == mixture.sources.index(noise))).tolist()
    else:  # mixed
        kinds = [k for k in NOISE_KINDS if np.any(mixture.kind == k)]
        count = noisy if noisy is not None else int(np.sum(mixture.kind == kinds[0]))
        for j in range(count):  # kinds in turn, sources shifted each round: every kind and source equally
            kind, s = kinds[j % len(kinds)], (j + j // len(kinds)) % len(mixture.sources)
            options = [i for i in np.flatnonzero((mixture.kind == kind) & (mixture.source == s)) if i not in picked]
            if not options:
                options = [i for i in np.flatnonzero(mixture.kind == kind) if i not in picked]
            picked.append(int(options[0]))
    return np.sort(np.asarray(picked, np.int64))


@dataclasses.dataclass(frozen=True)
class ContinualSplit:
    """existing: indices of the data the model already saw (clean, the seen source); pool: indices of the new pool
    (half the seen source, half the new source, the new half holding ``noisy`` low-quality examples of the new
    source); novel / low_quality: flags per pool index."""

    existing: np.ndarray
    pool: np.ndarray
    novel: np.ndarray
    low_quality: np.ndarray


def continual_split(mixture: NoisyMixture, rotation: int, *, per_half: int = 8, noisy: int = 2,
                    existing: int = 8) -> ContinualSplit:
    """Rotation r: the seen source is r, the new source r + 1. Existing = ``existing`` clean examples of the seen
    source; pool = ``per_half`` other clean examples of the seen source + ``per_half`` of the new source, of which
    ``noisy`` are low-quality (kinds taken in turn, starting at the rotation's)."""
    seen, new = rotation % len(mixture.sources), (rotation + 1) % len(mixture.sources)
    seen_clean = np.flatnonzero((mixture.source == seen) & (mixture.kind == CLEAN))
    new_clean = np.flatnonzero((mixture.source == new) & (mixture.kind == CLEAN))
    if len(seen_clean) < existing + per_half or len(new_clean) < per_half - noisy:
        raise DataError(f"the mixture has {len(seen_clean)} / {len(new_clean)} clean examples of the seen / new "
                        f"source; a continual split needs {existing + per_half} / {per_half - noisy}")
    broken = []
    for j in range(noisy):
        kind = NOISE_KINDS[(rotation + j) % len(NOISE_KINDS)]
        options = [i for i in np.flatnonzero((mixture.kind == kind) & (mixture.source == new)) if i not in broken]
        if not options:
            raise DataError(f"the mixture has no {kind} example of source {new} left for the continual split")
        broken.append(int(options[0]))
    pool = np.sort(np.concatenate([seen_clean[existing:existing + per_half], new_clean[:per_half - noisy],
                                   np.asarray(broken, np.int64)]))
    return ContinualSplit(seen_clean[:existing], pool, mixture.source[pool] == new, mixture.kind[pool] != CLEAN)
