"""One evaluation run: generate for a test set without and (optionally) with in-context demonstrations drawn from
a selected subset, then compute the requested metrics per condition.

Conditions: ``no_icl`` (the no-example template) unless ``EvalSetup.no_icl`` is False; ``icl`` when a
demonstration pool (the selected subset) is given: the k nearest pool examples precede each test prompt
(``icl.py``). Every condition uses the same generation settings and the same layout ``context + [eos]`` ->
response -> ``[eos]`` as training and scoring.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from delift_jax.data.records import Example
from delift_jax.data.templates import DEFAULT_TEMPLATES, Templates
from delift_jax.errors import DataError
from delift_jax.evaluate import metrics as M
from delift_jax.evaluate.generate import GenerationConfig, generate_responses
from delift_jax.evaluate.icl import icl_contexts
from delift_jax.evaluate.judge import JudgeConfig, judge_responses
from delift_jax.models.bert import load_sentence_encoder

VALID_METRICS = ("rouge", "embedding", "nll", "accuracy", "judge")


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Metric names from ``"rouge,nll"`` (or a list); unknown names are an error listing the valid ones."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise DataError(f"no metrics requested; choose from {', '.join(VALID_METRICS)}")
    unknown = [n for n in names if n not in VALID_METRICS]
    if unknown:
        raise DataError(f"unknown metric {', '.join(map(repr, unknown))}; valid metrics: {', '.join(VALID_METRICS)}")
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass
class EvalSetup:
    """What an evaluation needs besides the test set. encoder: for ``embedding`` and ICL retrieval; judge_model /
    judge_tokenizer: default to the evaluated model; scoring: a ``ScoringConfig`` for ``nll``; no_icl: run the
    no-example condition (False needs a ``pool``: ICL only)."""

    generation: GenerationConfig = GenerationConfig()
    metrics: tuple = ("rouge", "nll")
    pool: Sequence[Example] | None = None
    k: int = 5
    encoder: object = None
    judge_model: object = None
    judge_tokenizer: object = None
    judge_config: object = None
    scoring: object = None
    templates: Templates = DEFAULT_TEMPLATES
    progress: bool = False
    no_icl: bool = True


def evaluate_model(model, tokenizer, test: Sequence[Example], setup: EvalSetup) -> dict:
    """Run every condition; returns ``{"conditions": {name: summary}, "examples": [per-example records]}``."""
    if not test:
        raise DataError("the test set is empty; nothing to evaluate")
    metrics = parse_metrics(setup.metrics)
    if not setup.no_icl and setup.pool is None:
        raise DataError("no condition to evaluate: no_icl=False needs a demonstration pool for the ICL condition")
    if ("embedding" in metrics or setup.pool is not None) and setup.encoder is None:
        setup.encoder = load_sentence_encoder()
    conditions = {}
    if setup.no_icl:
        conditions["no_icl"] = ([setup.templates.context_without_example(ex) for ex in test], None)
    if setup.pool is not None:
        contexts, chosen = icl_contexts(setup.encoder, test, setup.pool, setup.k, setup.templates, setup.progress)
        conditions["icl"] = (contexts, chosen)

    records = [{"prompt": ex.prompt, "reference": ex.response} for ex in test]
    summaries = {}
    for name, (contexts, chosen) in conditions.items():
        start = time.perf_counter()
        predictions, result = generate_responses(model, tokenizer, test, setup.generation, contexts=contexts,
                                                 templates=setup.templates, progress=setup.progress)
        gen_seconds = time.perf_counter() - start
        per_example, extras, texts = _metric_values(model, tokenizer, test, contexts, predictions, metrics, setup)
        summary = M.summarize(per_example)
        summary.update(n=len(test), n_prompt_truncated=result.n_truncated, n_stopped_at_eos=int(result.stopped.sum()),
                       generated_tokens=result.n_new_tokens, generation_seconds=round(gen_seconds, 3),
                       generation_tokens_per_second=round(result.n_new_tokens / max(gen_seconds, 1e-9), 2))
        summary.update(extras)
        if chosen is not None:
            summary.update(k=setup.k, pool_size=len(setup.pool))
        summaries[name] = summary
        for i, record in enumerate(records):
            entry = {"prediction": predictions[i], "stopped_at_eos": bool(result.stopped[i])}
            entry.update({key: float(values[i]) for key, values in per_example.items()})
            entry.update({key: values[i] for key, values in texts.items()})
            if chosen is not None:
                entry["demonstrations"] = chosen[i].tolist()
            record[name] = entry
    return {"conditions": summaries, "examples": records}


def _metric_values(model, tokenizer, test, contexts, predictions, metrics, setup: EvalSetup):
    """(per-example metric arrays, condition-level extras, per-example text extras)."""
    references = [ex.response for ex in test]
    values: dict = {}
    extras: dict = {}
    texts: dict = {}
    if "rouge" in metrics:
        values.update(M.rouge_scores(predictions, references))
    if "embedding" in metrics:
        values["embedding_cosine"] = M.embedding_similarity(setup.encoder, predictions, references, setup.progress)
    if "accuracy" in metrics:
        values.update(M.accuracy_scores(predictions, references))
    if "nll" in metrics:
        nll = M.response_nll(model, tokenizer, contexts, references, setup.scoring, progress=setup.progress)
        values["nll"] = nll.per_example
        extras.update(token_nll=nll.nll, perplexity=nll.perplexity, nll_scored_tokens=int(nll.n_tokens.sum()),
                      nll_context_truncated=nll.n_truncated)
    if "judge" in metrics:
        judged = judge_responses(setup.judge_model or model, setup.judge_tokenizer or tokenizer,
                                 [ex.prompt for ex in test], predictions, references,
                                 setup.judge_config or JudgeConfig(), progress=setup.progress)
        values["judge_score"] = judged.scores
        extras.update(judged.summary())
        texts["judge_feedback"] = judged.feedback
        texts["judge_score_forced"] = judged.forced.tolist()
    return values, extras, texts
