"""LLM-as-judge with a Prometheus-style absolute rubric (score 1-5, reference answer given).

The prompt is Prometheus' absolute-grading prompt (Kim et al., 2024: instruction, response, a reference answer
that scores 5, a score rubric; the judge writes feedback, then ``[RESULT] n``). Any loaded causal LM can be the
judge; with a small model (e.g. the built-in SmolLM2-135M) the grades are a **small-judge approximation**, not
Prometheus-2 grading, and every result carries that label.

Scores are parsed from the judge's text (``parse_score``; robust to ``[RESULT] 4``, ``[Result]: (4)``,
``[RESULT] 4/5``, ``Score: 4``, ``a score of 4``; a bare ``Score 5`` is not taken, since small judges echo the
prompt's "Reference Answer (Score 5)" and rubric lines). When the text holds no score, ``force_score`` appends ``\\n[RESULT]`` to the
judge's own feedback and takes the most probable of the five score tokens (teacher forced); such scores are
flagged ``forced``. Parse failures are counted and reported, never silently dropped or imputed.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from delift_jax.data.tokenize import bucket_for, encode_ids, length_ladder
from delift_jax.errors import DataError
from delift_jax.evaluate.generate import GenerationConfig, eos_token_id, generate_ids

JUDGE_LABEL = "small-judge approximation"

ABSOLUTE_PROMPT = """###Task Description:
An instruction (might include an Input inside it), a response to evaluate, a reference answer that gets a score of 5, and a score rubric representing a evaluation criteria are given.
1. Write a detailed feedback that assess the quality of the response strictly based on the given score rubric, not evaluating in general.
2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to the score rubric.
3. The output format should look as follows: "(write a feedback for criteria) [RESULT] (an integer number between 1 and 5)"
4. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{instruction}

###Response to evaluate:
{response}

###Reference Answer (Score 5):
{reference}

###Score Rubrics:
{rubric}

###Feedback: """

DEFAULT_RUBRIC = """[Does the response follow the instruction and convey the same content as the reference answer, correctly and helpfully?]
Score 1: The response ignores the instruction or is wrong or irrelevant.
Score 2: The response addresses the instruction but is mostly wrong or misses most of the reference's content.
Score 3: The response is partly correct and covers some of the reference's content, with notable errors or omissions.
Score 4: The response is correct and covers most of the reference's content, with minor errors or omissions.
Score 5: The response is correct, complete and as helpful as the reference answer."""

_RESULT = re.compile(r"\[\s*result\s*\]\s*:?\s*\(?\s*([1-5])(?:\s*/\s*5)?\s*\)?(?!\d|\.\d)", re.IGNORECASE)
_FALLBACK = re.compile(r"\bscore\s*(?:of|is|:|=)\s*\(?([1-5])(?:\s*/\s*5)?\)?(?!\d|\.\d)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """rubric: Prometheus-format rubric; max_new_tokens: feedback length; force_score: see the module doc;
    use_chat_template: wrap the prompt in the judge tokenizer's chat template when it has one."""

    rubric: str = DEFAULT_RUBRIC
    max_new_tokens: int = 128
    max_prompt_tokens: int = 2048
    batch_size: int = 8
    force_score: bool = True
    use_chat_template: bool = True


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """scores: float 1-5 per item (NaN where none could be obtained); parsed: the score came from the text;
    forced: it came from the score-token probabilities; feedback: the judge's text."""

    scores: np.ndarray
    parsed: np.ndarray
    forced: np.ndarray
    feedback: list
    label: str = JUDGE_LABEL

    @property
    def n_parse_failures(self) -> int:
        return int((~self.parsed).sum())

    def summary(self) -> dict:
        finite = self.scores[np.isfinite(self.scores)]
        return {"judge_score": float(finite.mean()) if finite.size else float("nan"),
                "judge_parsed": int(self.parsed.sum()), "judge_forced": int(self.forced.sum()),
                "judge_parse_failures": self.n_parse_failures, "judge_label": self.label}


def judge_prompt(instruction: str, response: str, reference: str, rubric: str = DEFAULT_RUBRIC) -> str:
    return ABSOLUTE_PROMPT.format(instruction=instruction.strip(), response=response.strip(),
                                  reference=reference.strip(), rubric=rubric.strip())


def parse_score(text: str) -> int | None:
    """The 1-5 score of a judge output: the last ``[RESULT] n`` (variants allowed), else the last ``score: n``."""
    for pattern in (_RESULT, _FALLBACK):
        found = pattern.findall(text)
        if found:
            return int(found[-1])
    return None


def _prompt_ids(tokenizer, text: str, use_chat_template: bool) -> list[int]:
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return encode_ids(tokenizer, text)


def score_token_ids(tokenizer) -> list[int] | None:
    """Single-token ids for the scores 1..5 as written after ``[RESULT]`` (" 1" preferred, else "1")."""
    for form in (" {}", "{}"):
        ids = [encode_ids(tokenizer, form.format(s)) for s in range(1, 6)]
        if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 5:
            return [i[0] for i in ids]
    return None


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(graphdef, state, tokens_bt, lengths_b, candidates_c):
    model = nnx.merge(graphdef, state)
    valid_bt = jnp.arange(tokens_bt.shape[1])[None] < lengths_b[:, None]
    hidden_btd, _ = model(tokens_bt, valid_bt=valid_bt)
    last_bd = jnp.take_along_axis(hidden_btd, (lengths_b - 1)[:, None, None], axis=1)[:, 0]
    return model.logits(last_bd)[:, candidates_c]


def forced_scores(model, sequences: Sequence[Sequence[int]], candidates: Sequence[int], batch_size: int = 8,
                  max_length: int = 4096) -> np.ndarray:
    """For each token sequence, the index (0-4) of the most probable candidate next token, plus one (a score)."""
    graphdef, state = nnx.split(model)
    ladder = length_ladder(max_length)
    out = np.zeros(len(sequences), np.int64)
    for first in range(0, len(sequences), batch_size):
        rows = list(range(first, min(first + batch_size, len(sequences))))
        seqs = [list(sequences[i])[-max_length:] for i in rows]
        length = bucket_for(max(len(s) for s in seqs), ladder)
        tokens_bt = np.zeros((batch_size, length), np.int32)
        lengths_b = np.ones(batch_size, np.int32)
        for r, s in enumerate(seqs):
            tokens_bt[r, :len(s)] = s
            lengths_b[r] = len(s)
        logits = np.asarray(_last_logits(graphdef, state, tokens_bt, lengths_b, jnp.asarray(candidates)))
        out[rows] = np.argmax(logits[:len(rows)], axis=1) + 1
    return out


def judge_responses(model, tokenizer, instructions: Sequence[str], responses: Sequence[str],
                    references: Sequence[str], config: JudgeConfig = JudgeConfig(), *,
                    progress: bool = False) -> JudgeResult:
    """Grade each response 1-5 against its reference with ``model`` as the judge (greedy feedback)."""
    if not (len(instructions) == len(responses) == len(references)):
        raise DataError(f"judge inputs differ in length: {len(instructions)} instructions, {len(responses)} "
                        f"responses, {len(references)} references")
    if not instructions:
        raise DataError("no responses to judge")
    eos = eos_token_id(tokenizer)
    prompts = [_prompt_ids(tokenizer, judge_prompt(i, r, ref, config.rubric), config.use_chat_template)
               for i, r, ref in zip(instructions, responses, references)]
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens,
                                  batch_size=config.batch_size)
    result = generate_ids(model, prompts, generation, eos, progress=progress)
    feedback = [tokenizer.decode(t.tolist(), skip_special_tokens=True) for t in result.tokens]
    parsed_scores = [parse_score(text) for text in feedback]
    parsed = np.array([s is not None for s in parsed_scores])
    scores = np.array([np.nan if s is None else float(s) for s in parsed_scores])
    forced = np.zeros(len(prompts), bool)
    candidates = score_token_ids(tokenizer) if config.force_score else None
    failed = np.flatnonzero(~parsed)
    if candidates is not None and failed.size:
        suffix = encode_ids(tokenizer, "\n[RESULT]")
        sequences = [prompts[i][-config.max_prompt_tokens:] + result.tokens[i].tolist() + suffix for i in failed]
        scores[failed] = forced_scores(model, sequences, candidates, config.batch_size,
                                       config.max_prompt_tokens + config.max_new_tokens + len(suffix))
        forced[failed] = True
    return JudgeResult(scores=scores, parsed=parsed, forced=forced, feedback=feedback)
