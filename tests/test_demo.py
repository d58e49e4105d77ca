"""`delift demo` end to end on the tiny model: the known-answer table, results and the three plots, per use case."""

import json

import pytest

from delift_jax.cli import main

pytestmark = pytest.mark.slow

ARGS = ["--per-source", "2", "--targets", "1", "--test", "2", "--train-steps", "1", "--budget", "0.5"]


def test_demo_writes_composition_nll_and_plots(tiny_llama, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_llama[0]), *ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| method | asdiv | boolq | nq-open | commonsenseqa | share from asdiv |" in printed
    assert "| initial |" in printed and "within noise" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["picks"]) == {"delift", "delift_flmi", "delift_se", "random"}
    assert set(results["nll"]) == {"initial", "delift", "delift_flmi", "delift_se", "random"}
    for method, picks in results["picks"].items():
        assert len(picks) == 4 == sum(results["composition"][method]) and len(set(picks)) == 4
        # The composition counts the picks' sources.
        counts = [sum(results["pool_group"][i] == s for i in picks) for s in range(4)]
        assert counts == results["composition"][method]
    for name in ("composition.png", "nll_per_method.png", "kernel_by_group.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name

    # A rerun starts fresh and leaves unrelated files alone.
    (out / "unrelated.txt").write_text("kept")
    assert main(["demo", "--model", str(tiny_llama[0]), *ARGS, "--out", str(out)]) == 0
    assert "replacing the previous demo outputs" in capsys.readouterr().out
    assert (out / "unrelated.txt").read_text() == "kept"


@pytest.mark.parametrize("use_case, groups, methods", [
    ("instruction", ["clean", "swapped", "truncated", "repeated", "contradictory"],
     {"delift", "delift_authors", "delift_se", "random"}),
    ("continual", ["seen (truthfulqa)", "new (asdiv)", "new, low quality (asdiv)"],
     {"delift", "delift_authors", "delift_se", "random"}),
])
def test_demo_use_cases(tiny_llama, tmp_path, capsys, use_case, groups, methods):
    out = tmp_path / use_case
    per_source = "3" if use_case == "instruction" else "4"
    assert main(["demo", "--use-case", use_case, "--model", str(tiny_llama[0]), "--per-source", per_source,
                 "--test", "4", "--train-steps", "1", "--budget", "0.25", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| method | " + " | ".join(groups) in printed and "base share" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["use_case"] == use_case and results["groups"] == groups and set(results["picks"]) == methods
    pool_group = results["pool_group"]
    if use_case == "instruction":  # 3 clean per source, a quarter low quality: one of each kind
        assert len(pool_group) == 16 and [pool_group.count(g) for g in range(5)] == [12, 1, 1, 1, 1]
    else:  # 4 seen, 4 new of which one low quality
        assert [pool_group.count(g) for g in range(3)] == [4, 3, 1]
    for method, picks in results["picks"].items():
        assert len(set(picks)) == len(picks) == results["budget"] == sum(results["composition"][method])
        assert [sum(pool_group[i] == g for i in picks) for g in range(len(groups))] == results["composition"][method]
    assert set(results["nll"]) == methods | {"initial"}
    assert set(results["seconds_by_phase"]) == {"load", "select", "train_and_score"}
    for name in ("composition.png", "nll_per_method.png", "kernel_by_group.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
