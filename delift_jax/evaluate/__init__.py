"""Evaluation: KV-cache generation, metrics (ROUGE, embedding similarity, NLL, accuracy, small-judge grading),
ICL evaluation with nearest demonstrations, and the ``delift evaluate`` command.

Submodules are imported where used (``from delift_jax.evaluate.generate import generate_ids``), so importing the
package stays cheap.
"""
