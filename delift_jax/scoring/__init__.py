"""Teacher-forced response scoring (teacher_forced.py: the probability the model gives each scored response token),
how much each prompt tells the model about its response (prompt_information.py: DELIFT's instruction quality
term) and the ``delift score`` command that prints scores per example (command.py)."""

from delift_jax.scoring.teacher_forced import (
    ScoreTable,
    ScoringConfig,
    TeacherForcedScorer,
    make_response_logprobs_fn,
    mean_log_prob,
    no_example_sequences,
    rms_distance,
    score_examples,
    target_logprobs,
)

__all__ = [
    "ScoreTable",
    "ScoringConfig",
    "TeacherForcedScorer",
    "make_response_logprobs_fn",
    "mean_log_prob",
    "no_example_sequences",
    "rms_distance",
    "score_examples",
    "target_logprobs",
]
