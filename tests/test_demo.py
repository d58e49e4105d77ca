"""`delift demo` end to end on the tiny model: the comparison table, results and the three plots."""

import json

import pytest

from delift_jax.cli import main

pytestmark = pytest.mark.slow


def test_demo_writes_table_results_and_plots(tiny_llama, tmp_path, capsys):
    out = tmp_path / "demo"
    status = main(["demo", "--model", str(tiny_llama[0]), "--examples", "12", "--train-steps", "1",
                   "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| method | selected |" in printed and "| initial | 0 |" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"delift", "random", "full", "initial"}
    for name in ("rougeL_per_method.png", "kernel_heatmap.png", "greedy_gains.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name

    # A rerun starts fresh, even over a kernel store another version wrote (which a resume would refuse).
    manifest_path = out / "delift" / "kernels" / "pool" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, format_version=1)))
    (out / "unrelated.txt").write_text("kept")
    status = main(["demo", "--model", str(tiny_llama[0]), "--examples", "12", "--train-steps", "1",
                   "--out", str(out)])
    assert status == 0 and "replacing the previous demo outputs" in capsys.readouterr().out
    assert json.loads(manifest_path.read_text())["format_version"] != 1
    assert (out / "unrelated.txt").read_text() == "kept"
