"""Seconds JAX has spent tracing, lowering and compiling in this process, so benchmarks can report them apart."""

from __future__ import annotations

import jax

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_state = {"seconds": 0.0, "listening": False}


def _on_event(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _state["seconds"] += duration


def compile_seconds() -> float:
    """Compile seconds counted so far; the first call starts counting (call it before the work to be measured)."""
    if not _state["listening"]:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
        _state["listening"] = True
    return _state["seconds"]
