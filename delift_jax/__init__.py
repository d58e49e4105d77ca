"""delift_jax: DELIFT data selection for LLM fine-tuning, in JAX."""

__version__ = "0.1.0"
