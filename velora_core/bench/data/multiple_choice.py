"""Multiple-choice questions: MMLU's prompt layout, k-shot exemplars and answer-letter tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from velora_core.models.tokenizers import Tokenizer

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question; ``answer`` indexes ``choices``; ``subject`` names MMLU's subject."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def format_mc_question(q: MCQuestion, with_answer: bool) -> str:
    """MMLU's layout: ``Question: …\\nA. …\\nB. …\\nAnswer:`` and `` B`` when ``with_answer``."""
    lines = [f"Question: {q.question}"]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return f"{text} {LETTERS[q.answer]}" if with_answer else text


def build_kshot_prompt(shots: Sequence[MCQuestion], question: MCQuestion) -> str:
    """The exemplars with their answers, then the question, blank-line separated, ending in ``Answer:``.

    A question with a ``subject`` gets MMLU's header ("The following are multiple choice questions
    (with answers) about <subject>.").
    """
    header = (
        f"The following are multiple choice questions (with answers) about {question.subject}.\n\n"
        if question.subject
        else ""
    )
    parts = [format_mc_question(s, with_answer=True) for s in shots]
    parts.append(format_mc_question(question, with_answer=False))
    return header + "\n\n".join(parts)


def select_shots(shots: Sequence[MCQuestion], question: MCQuestion, num_shots: int) -> list[MCQuestion]:
    """The first ``num_shots`` exemplars of the question's subject (MMLU), else the first overall."""
    if num_shots <= 0:
        return []
    same = [s for s in shots if s.subject == question.subject] if question.subject else []
    return list((same or shots)[:num_shots])


def answer_tokens(tokenizer: Tokenizer, num_choices: int) -> tuple[list[int], list[int]]:
    """How answer letters are scored: ``(suffix, letter_ids)``.

    A prompt ends in ``Answer:`` and MMLU's continuation is `` A``, `` B``…. Encode ``Answer:`` and
    ``Answer: X`` for each letter; the extra tokens' common prefix is ``suffix`` (appended to every
    prompt) and what remains must be one distinct token per letter. For LLaMA's or GPT-2's
    tokenizers ``suffix`` is empty and the letter tokens are ``▁A``/``ĠA``; for the byte tokenizer
    ``suffix`` is the space byte and the letter tokens are the letters' bytes. Scoring the letter
    token after ``suffix`` ranks the letters exactly as the log-likelihood of the whole continuation
    would, since the suffix is common to all of them.

    Raises:
        ValueError: the tokenizer does not split the continuations that way.
    """
    if not 2 <= num_choices <= len(LETTERS):
        raise ValueError(f"num_choices must lie in [2, {len(LETTERS)}], got {num_choices}")
    base = tokenizer.encode("Answer:")
    tails = []
    for letter in LETTERS[:num_choices]:
        full = tokenizer.encode(f"Answer: {letter}")
        if full[: len(base)] != base:
            raise ValueError(f"the tokenizer merges 'Answer:' with ' {letter}'; cannot score answer letters")
        tails.append(full[len(base) :])
    suffix: list[int] = []
    for column in zip(*tails, strict=False):  # longest common prefix of the tails
        if len(set(column)) > 1:
            break
        suffix.append(column[0])
    letters = [tail[len(suffix) :] for tail in tails]
    if any(len(rest) != 1 for rest in letters) or len({rest[0] for rest in letters}) != num_choices:
        raise ValueError(f"answer letters do not encode as one distinct token each: {tails}")
    return list(suffix), [rest[0] for rest in letters]


def encode_mc_prompt(
    tokenizer: Tokenizer, prompt: str, suffix: Sequence[int], max_length: int | None
) -> tuple[list[int], bool]:
    """``bos + prompt + suffix`` as ids, left-truncated to ``max_length`` (keeping bos); and whether cut.

    Left truncation drops the oldest exemplars first and always keeps the question being asked.
    """
    ids = tokenizer.encode(prompt, add_bos=True) + list(suffix)
    if max_length is None or len(ids) <= max_length:
        return ids, False
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos and max_length > 1:
        return [bos, *ids[len(ids) - max_length + 1 :]], True
    return ids[len(ids) - max_length :], True


def fit_kshot_prompt(
    tokenizer: Tokenizer,
    shots: Sequence[MCQuestion],
    question: MCQuestion,
    num_shots: int,
    suffix: Sequence[int],
    max_length: int | None,
) -> tuple[list[int], int]:
    """``bos + k-shot prompt + suffix`` as ids, with as many of ``num_shots`` exemplars as fit.

    Never cuts a prompt: with ``max_length``, exemplars are dropped from the last one until the
    prompt fits, and the number kept is returned with the ids (record it: a 5-shot score is not a
    2-shot score).

    Raises:
        ValueError: the question alone, without any exemplar, is longer than ``max_length``.
    """
    chosen = select_shots(shots, question, num_shots)
    for kept in range(len(chosen), -1, -1):
        ids = tokenizer.encode(build_kshot_prompt(chosen[:kept], question), add_bos=True) + list(suffix)
        if max_length is None or len(ids) <= max_length:
            return ids, kept
    raise ValueError(
        f"a question of {len(ids)} tokens with no exemplar is longer than the model's {max_length} "
        f"positions; it would have to be cut: {question.question[:80]!r}"
    )
