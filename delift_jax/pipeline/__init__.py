"""``delift run``: one use case end to end: data -> seeded disjoint splits -> selection per method -> subset
export -> fine-tune -> evaluation on a held-out split selection never saw -> ``results.json`` / ``results.md``.

    from delift_jax.pipeline import RunConfig, run_use_case
    results = run_use_case("smollm2", "ifbench", use_case="instruction", budget=0.3,
                           methods=("delift", "random", "full", "initial"), out_dir="runs/instr")

Stages (each a function of frozen records): ``load_source`` (inputs.py) -> ``make_splits`` (splits.py) ->
``run_method`` per method (method.py) -> ``RunWriter`` (writer.py), sequenced by ``run_use_case`` (run.py).
"""

from delift_jax.pipeline.config import RunConfig, RunInputs, load_run_file
from delift_jax.pipeline.method import MethodResult, run_method
from delift_jax.pipeline.run import run_use_case
from delift_jax.pipeline.splits import Splits, make_splits
from delift_jax.pipeline.writer import RunWriter

__all__ = ["MethodResult", "RunConfig", "RunInputs", "RunWriter", "Splits", "load_run_file", "make_splits",
           "run_method", "run_use_case"]
