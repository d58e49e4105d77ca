"""``delift run``: one use case end to end (issue 6): data -> seeded disjoint splits -> selection per method ->
subset export -> fine-tune -> evaluation on a held-out split selection never saw -> ``results.json`` / ``results.md``.

    from delift_jax.pipeline import RunConfig, run_use_case
    results = run_use_case("smollm2", "ifbench", use_case="instruction", budget=0.3,
                           methods=("delift", "random", "full", "initial"), out_dir="runs/instr")
"""

from delift_jax.pipeline.config import RunConfig
from delift_jax.pipeline.run import run_use_case

__all__ = ["RunConfig", "run_use_case"]
