"""`delift demo` end to end on the tiny model: the known-answer table, results and the three plots."""

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
        counts = [sum(results["pool_source"][i] == s for i in picks) for s in range(4)]
        assert counts == results["composition"][method]
    for name in ("composition.png", "nll_per_method.png", "kernel_by_source.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name

    # A rerun starts fresh and leaves unrelated files alone.
    (out / "unrelated.txt").write_text("kept")
    assert main(["demo", "--model", str(tiny_llama[0]), *ARGS, "--out", str(out)]) == 0
    assert "replacing the previous demo outputs" in capsys.readouterr().out
    assert (out / "unrelated.txt").read_text() == "kept"
