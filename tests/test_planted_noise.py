"""delift_jax.report.planted_noise: the planted low-quality examples are what their kind says, the draw is seeded
and its parts disjoint, and the pools cut from it have the stated composition."""

from __future__ import annotations

import numpy as np
import pytest

from delift_jax.data import Example
from delift_jax.errors import DataError
from delift_jax.report.planted_noise import (CLEAN, NOISE_KINDS, REPEATED_RESPONSE, continual_split, contradictory,
                                             instruction_pool, noisy_mixture, plant_noise, truncated)

SOURCES = ("yesno", "choice", "math", "open")


def fake_loader(name):
    """Four sources, each with its own answer format (what the contradictory rules key on)."""
    def make(i):
        if name == "yesno":
            return Example(f"Instruction: yesno question {i}\nInput: passage {i}\n", " True" if i % 2 else " False")
        if name == "choice":
            return Example(f"Instruction: choice question {i}\nInput: A. red {i}\nB. blue {i}\nC. green {i}\n",
                           f" B. blue {i}")
        if name == "math":
            return Example(f"Instruction: math question {i}\nInput: count {i}\n", f" {i + 3} apples")
        return Example(f"Instruction: open question {i}\nInput: \n", f" the answer of open question {i} is here")
    return [make(i) for i in range(60)]


@pytest.fixture(scope="module")
def mixture():
    return noisy_mixture(0, SOURCES, clean_per_source=16, per_kind=2, test_per_source=4, loader=fake_loader)


def test_draw_is_seeded_disjoint_and_labelled(mixture):
    again = noisy_mixture(0, SOURCES, clean_per_source=16, per_kind=2, test_per_source=4, loader=fake_loader)
    other = noisy_mixture(1, SOURCES, clean_per_source=16, per_kind=2, test_per_source=4, loader=fake_loader)
    assert again.examples == mixture.examples and other.examples != mixture.examples
    assert len(mixture.examples) == 4 * 16 + 4 * 4 * 2
    for s, name in enumerate(SOURCES):
        assert np.sum((mixture.source == s) & (mixture.kind == CLEAN)) == 16
        for kind in NOISE_KINDS:
            assert np.sum((mixture.source == s) & (mixture.kind == kind)) == 2
        assert all(name in e.prompt for e, src in zip(mixture.examples, mixture.source) if src == s)
    prompts = [e.prompt for e in mixture.examples]
    assert len(set(prompts)) == len(prompts)  # every corrupted example has its own base, never a clean copy
    test_prompts = {e.prompt for part in mixture.test.values() for e in part}
    assert not test_prompts & set(prompts)
    assert mixture.kind.tolist() != sorted(mixture.kind.tolist())  # shuffled


def test_each_kind_is_corrupted_as_documented(mixture):
    clean = {e.prompt: e.response for e in fake_loader("yesno") + fake_loader("choice") + fake_loader("math")
             + fake_loader("open")}
    for example, kind, s in zip(mixture.examples, mixture.kind, mixture.source):
        original = clean[example.prompt]
        if kind == CLEAN:
            assert example.response == original
        elif kind == "repeated":
            assert example.response == REPEATED_RESPONSE
        elif kind == "truncated":
            assert original.startswith(example.response) and len(example.response) < len(original)
        elif kind == "swapped":  # another source's response
            assert example.response not in {e.response for e in fake_loader(SOURCES[s])}
        else:
            assert example.response != original
            name = SOURCES[s]
            if name == "yesno":
                assert {example.response, original} == {" True", " False"}
            elif name == "choice":
                assert example.response.strip() in example.prompt and example.response != original
            elif name == "math":
                assert example.response.endswith(" apples")
            else:
                assert example.response in {e.response for e in fake_loader("open")}


def test_truncation_and_contradiction_rules():
    assert truncated(" the answer of open question") == " the"
    assert truncated(" True") == " Tr"
    rng = np.random.default_rng(0)
    assert contradictory(Example("p", " False"), rng, []) == " True"
    with pytest.raises(DataError, match="another response"):
        contradictory(Example("p", " a sentence"), rng, [Example("q", " a sentence")])


def test_instruction_pools(mixture):
    for noise in NOISE_KINDS:
        pool = instruction_pool(mixture, noise, seed=0)
        assert len(pool) == 32 and np.sum(mixture.kind[pool] == noise) == 8
        assert set(mixture.kind[pool]) == {CLEAN, noise}
        assert np.bincount(mixture.source[pool][mixture.kind[pool] == CLEAN]).tolist() == [6, 6, 6, 6]
    mixed = instruction_pool(mixture, "mixed", seed=0)
    low = mixture.kind[mixed] != CLEAN
    assert len(mixed) == 32 and low.sum() == 8
    assert all(np.sum(mixture.kind[mixed] == k) == 2 for k in NOISE_KINDS)
    assert np.bincount(mixture.source[mixed][low]).tolist() == [2, 2, 2, 2]
    with pytest.raises(DataError, match="unknown noise"):
        instruction_pool(mixture, "typos", seed=0)


def test_continual_split(mixture):
    for rotation in range(4):
        split = continual_split(mixture, rotation)
        seen, new = rotation, (rotation + 1) % 4
        assert len(split.existing) == 8 and len(split.pool) == 16
        assert not set(split.existing) & set(split.pool)
        assert np.all(mixture.source[split.existing] == seen) and np.all(mixture.kind[split.existing] == CLEAN)
        assert split.novel.sum() == 8 and np.all(mixture.source[split.pool][split.novel] == new)
        assert split.low_quality.sum() == 2 and np.all(split.novel[split.low_quality])


def test_plant_noise_in_one_dataset():
    examples = fake_loader("open")[:40]
    noisy, kind = plant_noise(examples, 0.25, seed=3)
    again, _ = plant_noise(examples, 0.25, seed=3)
    assert noisy == again and len(noisy) == 40
    assert np.sum(kind != CLEAN) == 10 and all(np.sum(kind == k) >= 2 for k in NOISE_KINDS)
    for before, after, k in zip(examples, noisy, kind):
        assert after.prompt == before.prompt  # prompts untouched: a seeded split of the pool is unchanged
        assert (after.response == before.response) == (k == CLEAN)
