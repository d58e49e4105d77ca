"""``RunConfig``: every setting of one ``delift run`` (frozen, validated, JSON-able), with documented defaults.

use_case: ``instruction`` (facility location over the pool kernel), ``task`` (FL mutual information with the
    target set's selection part as queries) or ``continual`` (FL conditional gain against the existing data).
budget: a fraction in (0, 1] of the selection pool (k = int(budget * n), at least one pick) or an int count in
    [1, n]. ``full`` ignores it and ``initial`` selects nothing.
methods: names from ``delift_jax.methods.METHODS`` (aliases like "DELIFT (SE)" are accepted), run in this order.
seed: drives the splits, every method's random choices, fine-tuning (data order, LoRA init) and sampling.
split: (train, validation, test) fractions of the evaluation source, default (0.8, 0.1, 0.1). For ``instruction``
    and ``continual`` the pool is split: selection sees only its train part, the test part is the held-out
    evaluation set, the validation part is reserved (never selected from, never trained on, never evaluated).
    For ``task`` the target (benchmark) set is split: its train + validation parts are the selection queries, its
    test part is the held-out evaluation set; the pool is not split (every pool example is a candidate).
limit / target_limit / existing_limit: keep the first N examples of each input (None: all).
kernel: ``KernelConfig`` of DELIFT's utility kernels (default: the authors' settings but the distance, pmi;
    ``distance="rms"`` is the paper's; on CPUs cap ``max_response_tokens``; ``utility="surrogate"``: exact pairs on a
    sample, a network for the rest, the picks' entries refined, ``methods/refine.py``). train: ``TrainConfig`` of each
    fine-tuning run (default LoRA, one epoch).
generation: ``GenerationConfig`` of the evaluation (default greedy, 128 new tokens). metrics: evaluation metrics
    (default rouge, nll; see ``delift_jax.evaluate.pipeline.VALID_METRICS``). nll_max_length: longest scored
    sequence for ``nll``. method_options: options per method name (e.g. ``{"delift": {"eta": 0.5}}``), each
    validated against the method's options class (``delift_jax.methods.METHODS[name].options``) at construction;
    the pipeline supplies the run's own settings (kernel config, kernel store, encoder) underneath them.
checkpoints: write fine-tuning checkpoints under each method's directory (a rerun resumes); default True.
icl_k: also evaluate the base (not fine-tuned) model with the ``icl_k`` examples of each method's subset nearest to
    each test prompt as in-context demonstrations (the DELIFT paper's ICL setting; fewer when the subset is
    smaller); 0 (default) skips it.
continual_start: ``existing`` (default): in the continual use case the model first fine-tunes on the existing
    data, and selection, every method's fine-tuning and the ``initial`` row start from that model (the model
    "already has" the existing data, as conditional gain assumes); ``base`` starts everything from the base model.
export_models: write each fine-tuned model (LoRA merged) as a Hugging Face directory ``<method>/model``.

``RunInputs`` names what a run reads (model, pool, target and existing sets, record options). A run file (TOML, or
the ``results.json`` of an earlier run) holds both: RunConfig's fields at the top level (``kernel``, ``train``,
``generation`` and ``method_options.<name>`` as tables) and the inputs as ``[inputs]``; ``load_run_file`` reads
it, ``RunConfig.from_dict`` / ``RunInputs.from_dict`` build them with unknown keys as errors.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import tomllib
from pathlib import Path
from typing import Mapping

from delift_jax.budget import check_budget, parse_budget
from delift_jax.data.sources import record_options
from delift_jax.data.templates import DEFAULT_TEMPLATES
from delift_jax.errors import DataError
from delift_jax.evaluate.generate import GenerationConfig
from delift_jax.evaluate.pipeline import parse_metrics
from delift_jax.kernel import KernelConfig
from delift_jax.kernel.config import SURROGATE_FIELDS
from delift_jax.methods import METHODS, USE_CASES, canonical_name, get_method, method_options
from delift_jax.models.loading import DEFAULT_MODEL
from delift_jax.options import build_options, jsonable, options_dict
from delift_jax.train import TrainConfig

__all__ = ["RunConfig", "RunInputs", "check_budget", "check_methods", "load_run_file", "parse_budget"]

DEFAULT_METHODS = ("delift", "random", "full", "initial")
DEFAULT_METRICS = ("rouge", "nll")
CONTINUAL_STARTS = ("existing", "base")
RECORD_OPTIONS = ("prompt_field", "response_field", "input_field", "options_field", "context_field", "format", "dedupe",
                  "drop_empty")


def check_methods(methods) -> tuple[str, ...]:
    """Canonical method names (aliases resolved, duplicates dropped); unknown names list the valid ones."""
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if str(m).strip()]
    if not names:
        raise DataError(f"no methods given; valid names: {', '.join(METHODS)}")
    for name in names:
        get_method(name)  # one-line DataError listing the valid names
    return tuple(dict.fromkeys(canonical_name(n) for n in names))


def parse_split(text) -> tuple[float, ...]:
    """'0.8,0.1,0.1' (or a sequence) -> (0.8, 0.1, 0.1); the fractions are checked by ``RunConfig``."""
    try:
        return tuple(float(x) for x in (str(text).split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise DataError(f"split {text!r} must be three comma-separated fractions, e.g. 0.8,0.1,0.1") from None


def check_split(split, use_case: str) -> tuple[float, float, float]:
    split = parse_split(split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6 or split[2] <= 0:
        raise DataError(f"split fractions {split} must be (train, validation, test), non-negative, "
                        "summing to 1, with a positive test fraction (the held-out evaluation set)")
    if use_case != "task" and split[0] <= 0:
        raise DataError(f"split fractions {split}: the train part is the selection pool and must be positive")
    return split


@dataclasses.dataclass(frozen=True)
class RunConfig:
    use_case: str = "instruction"
    budget: float | int = 0.3
    methods: tuple | str = DEFAULT_METHODS  # a str is a comma-separated list (as --methods gives it)
    seed: int = 0
    split: tuple | str = (0.8, 0.1, 0.1)  # or "0.8,0.1,0.1"
    limit: int | None = None
    target_limit: int | None = None
    existing_limit: int | None = None
    kernel: KernelConfig = KernelConfig()
    train: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    metrics: tuple | str = DEFAULT_METRICS  # or "rouge,nll"
    nll_max_length: int = 2048
    method_options: dict = dataclasses.field(default_factory=dict)
    checkpoints: bool = True
    icl_k: int = 0
    continual_start: str = "existing"
    export_models: bool = False

    def __post_init__(self):
        if self.use_case not in USE_CASES:
            raise DataError(f"use case {self.use_case!r} is unknown; choose one of {', '.join(USE_CASES)}")
        object.__setattr__(self, "budget", check_budget(self.budget))
        object.__setattr__(self, "methods", check_methods(self.methods))
        object.__setattr__(self, "metrics", parse_metrics(self.metrics))
        object.__setattr__(self, "split", check_split(self.split, self.use_case))
        for name in ("limit", "target_limit", "existing_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name}={value} must be at least 1 (or None for all)")
        if isinstance(self.icl_k, bool) or not isinstance(self.icl_k, numbers.Integral) or self.icl_k < 0:
            raise DataError(f"icl_k={self.icl_k!r} must be a whole number of demonstrations >= 0 (0 turns ICL off)")
        if self.continual_start not in CONTINUAL_STARTS:
            raise DataError(f"continual_start {self.continual_start!r} is unknown; choose one of "
                            f"{', '.join(CONTINUAL_STARTS)}")
        object.__setattr__(self, "method_options", self._checked_method_options())

    def _checked_method_options(self) -> dict:
        """{canonical name: the user's option mapping}, each checked by building the method's options class."""
        options = {}
        for key, value in dict(self.method_options).items():
            name = canonical_name(key)
            if name not in self.methods:
                raise DataError(f"method_options for {name}, which is not among the methods run "
                                f"({', '.join(self.methods)})")
            values = options_dict(value) if dataclasses.is_dataclass(value) else dict(value)
            method_options(name, values)  # unknown keys and bad values fail here, before any loading
            options[name] = values
        return options

    def options_for(self, name: str, defaults: Mapping) -> object:
        """Method ``name``'s options: the ``defaults`` its options class accepts, the user's options on top."""
        accepted = get_method(name).options.names()
        values = {k: v for k, v in defaults.items() if k in accepted}
        values.update(self.method_options.get(name, {}))
        return method_options(name, values)

    def to_dict(self) -> dict:
        """Every setting as JSON-able values; ``RunConfig.from_dict`` reads it back."""
        out = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.kernel.templates == DEFAULT_TEMPLATES:
            out["kernel"].pop("templates")
        if self.kernel.utility == "exact":  # an exact run's settings read as they did before the surrogate existed
            for name in SURROGATE_FIELDS:
                out["kernel"].pop(name)
        out["train"] = self.train.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> RunConfig:
        """A RunConfig from a mapping shaped like ``to_dict`` (e.g. a TOML file); unknown keys are errors."""
        return build_options(cls, values, "run config")


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """What a run reads: the model (HF directory, .gguf or 'smollm2'), the pool (``data``), the target set
    (task) and the existing data (continual), and how records map to examples (``delift run`` data options)."""

    model: str = DEFAULT_MODEL
    data: str | None = None
    target: str | None = None
    existing: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    input_field: str | None = None
    options_field: str | None = None
    context_field: str | None = None
    format: str | None = None
    dedupe: bool = False
    drop_empty: bool = False

    def data_options(self) -> dict:
        """``load_dataset`` keywords for the pool."""
        return record_options(**{name: getattr(self, name) for name in RECORD_OPTIONS})

    def to_dict(self) -> dict:
        return options_dict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> RunInputs:
        return build_options(cls, values, "run inputs")


def load_run_file(path) -> tuple[dict, dict]:
    """(RunConfig mapping, RunInputs mapping) of a run file: TOML (RunConfig's fields, ``[inputs]``) or the
    ``results.json`` of an earlier run (its ``config`` and ``inputs``), so a finished run can be repeated."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise DataError(f"cannot read the run file {path}: {exc.strerror or exc}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"run file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(document, dict):
        raise DataError(f"run file {path} must hold a table of settings")
    if "config" in document and "methods" in document:  # results.json of an earlier run
        inputs = document.get("inputs") or {}
        names = {f.name for f in dataclasses.fields(RunInputs)}
        resolved = {k: v for k, v in inputs.items() if k in names}
        resolved.update(inputs.get("data_options") or {})
        return dict(document["config"]), resolved
    config = dict(document)
    inputs = config.pop("inputs", {})
    if not isinstance(inputs, dict):
        raise DataError(f"run file {path}: inputs must be a table ([inputs])")
    return config, inputs
