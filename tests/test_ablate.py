"""scripts/ablate.py on the tiny model: 2 methods × 2 budgets × 2 seeds on 16 real IFBench examples -> CSV rows for
every cell, a mean ± std markdown table, and valid non-empty PNGs (metric vs budget, kernel heatmap, greedy gains);
DELIFT's kernel is computed once per seed and reused by the second budget."""

import importlib.util
from pathlib import Path

import pytest

from test_pipeline_common import ifbench_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--kernel-max-length", "160", "--max-response-tokens", "8", "--train-steps", "2", "--batch-size", "4",
        "--max-length", "256", "--max-new-tokens", "3", "--metrics", "rouge,nll"]


def load_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "ablate.py"
    spec = importlib.util.spec_from_file_location("ablate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~45 s on 2 CPU cores
def test_ablate_end_to_end(tiny_llama, tmp_path, capsys):
    from delift_jax.report import read_csv

    ablate = load_script()
    data = ifbench_file(tmp_path / "pool.jsonl", 16)
    out = tmp_path / "ablation"
    argv = ["--model", str(tiny_llama[0]), "--data", str(data), "--methods", "delift,random", "--budgets", "0.2",
            "0.5", "--seeds", "0", "1", "--out", str(out)] + FAST
    assert ablate.main(argv) == 0

    rows = read_csv(out / "ablation.csv")
    cells = {(r["method"], r["budget"], r["seed"]) for r in rows}
    assert cells == {(m, b, s) for m in ("delift", "random") for b in (0.2, 0.5) for s in (0, 1)}
    metrics = {r["metric"] for r in rows}
    assert {"rouge1", "rougeL", "token_nll"} <= metrics
    assert len(rows) == len(cells) * len(metrics)
    for (method, budget, seed) in cells:
        selected = {r["selected"] for r in rows if (r["method"], r["budget"], r["seed"]) == (method, budget, seed)}
        assert len(selected) == 1 and selected.pop() >= 1

    table = (out / "ablation.md").read_text(encoding="utf-8")
    assert "## rougeL" in table and "| delift |" in table and "| random |" in table
    assert "budget 0.2" in table and "budget 0.5" in table and "(n=2)" in table and "±" in table

    pngs = [out / f"metric_vs_budget_{m}.png" for m in metrics] + [out / "kernel_heatmap.png",
                                                                   out / "greedy_gains.png"]
    for path in pngs:
        blob = path.read_bytes()
        assert len(blob) > 1000 and blob.startswith(PNG_MAGIC), path

    # one kernel store per seed, shared by both budgets; every run directory has its results
    for seed in (0, 1):
        assert (out / "kernels" / f"seed{seed}" / "pool" / "kernel.npy").is_file()
        for budget in ("0.2", "0.5"):
            assert (out / "runs" / f"b{budget}_s{seed}" / "results.json").is_file()
            assert not (out / "runs" / f"b{budget}_s{seed}" / "delift" / "kernels").exists()
    assert "wrote" in capsys.readouterr().out


def test_ablate_bad_budget_is_one_line_error(tmp_path, capsys):
    ablate = load_script()
    assert ablate.main(["--budgets", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: budget 1.5")
