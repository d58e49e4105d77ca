"""results.json entries: a method whose metrics came out NaN/inf is marked failed, never recorded as a success."""

import json
import math
import types

import numpy as np

from delift_jax.evaluate.report import to_jsonable
from delift_jax.pipeline.method import MethodResult
from delift_jax.pipeline.results import _cell, failed_methods, method_record, non_finite_metrics


def _result(metrics, icl=None):
    selection = types.SimpleNamespace(info={"method": "random"})
    return MethodResult("random", selection, np.arange(3), (), {"steps": 2}, None,
                        {"conditions": {"no_icl": metrics}}, {"conditions": {"icl": icl}} if icl else None,
                        {"select": 0.0})


def test_finite_metrics_are_ok():
    entry = method_record(_result({"token_nll": 2.5, "rougeL": 0.3}), None)
    assert entry["status"] == "ok"
    assert failed_methods({"methods": {"random": entry}}) == {}


def test_nan_and_inf_metrics_mark_the_method_failed():
    assert non_finite_metrics({"token_nll": math.nan, "perplexity": math.inf, "rougeL": 0.2, "n": 3}) == \
        ["perplexity", "token_nll"]
    entry = method_record(_result({"token_nll": math.nan, "rougeL": 0.2}, icl={"token_nll": math.inf}), None)
    assert entry["status"] == "failed: non-finite token_nll, ICL token_nll"
    results = {"methods": {"random": entry, "full": method_record(_result({"token_nll": 1.0}), None)}}
    assert failed_methods(results) == {"random": entry["status"]}
    # The JSON stays strict (NaN becomes null) and the status says why the value is missing.
    text = json.dumps(to_jsonable(results), allow_nan=False)
    assert json.loads(text)["methods"]["random"]["metrics"]["token_nll"] is None
    assert _cell(math.nan) == "non-finite" and _cell(None) == "-" and _cell(0.25) == "0.2500"
