"""Multiple-choice questions in lm-evaluation-harness's ``mmlu`` layout, k-shot exemplars, answer tokens.

The prompt is the harness's (``lm_eval/tasks/mmlu/default/_default_template_yaml``, the layout of
Hendrycks et al.'s original evaluation and of QLoRA's): the subject header, then each exemplar as
``{question}\nA. {choice}\nB. …\nAnswer: {letter}`` and the question without its letter, separated
by blank lines. Exemplars are the first ``k`` of the question's own subject in the dev split (the
harness's ``first_n`` sampler over each subject's dev split); a question with fewer says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from velora_core.models.tokenizers import Tokenizer

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The harness's mmlu ``description`` (the subject with spaces for underscores).
SUBJECT_HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"
#: Between the prompt and a choice (the harness's ``target_delimiter``) and between exemplars
#: (``fewshot_delimiter``).
TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question; ``answer`` indexes ``choices``; ``subject`` names MMLU's subject."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def format_mc_question(q: MCQuestion, with_answer: bool) -> str:
    """The harness's ``doc_to_text``: ``{question}\nA. …\nB. …\nAnswer:``, and `` B`` when ``with_answer``."""
    lines = [q.question.strip()]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return f"{text}{TARGET_DELIMITER}{LETTERS[q.answer]}" if with_answer else text


def build_kshot_prompt(shots: Sequence[MCQuestion], question: MCQuestion) -> str:
    """The subject header (if the question has a subject), the exemplars with their answers and the
    question, blank-line separated, ending in ``Answer:``: the harness's context, character for character."""
    header = SUBJECT_HEADER.format(subject=question.subject) if question.subject else ""
    examples = "".join(format_mc_question(s, with_answer=True) + FEWSHOT_DELIMITER for s in shots)
    return header + examples + format_mc_question(question, with_answer=False)


def select_shots(shots: Sequence[MCQuestion], question: MCQuestion, num_shots: int) -> list[MCQuestion]:
    """The first ``num_shots`` exemplars of the question's subject (all of them if fewer: the caller
    records that), or the first overall for a question without a subject."""
    if num_shots <= 0:
        return []
    pool = [s for s in shots if s.subject == question.subject] if question.subject else list(shots)
    return pool[:num_shots]


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
) -> tuple[list[int], int]:
    """The model's input for ``prompt``, as lm-evaluation-harness builds it, and the tokens cut.

    ``prompt`` is encoded as the tokenizer encodes a text (bos only where it adds one itself:
    LLaMA's and the byte tokenizer's do, GPT-2's does not), then ``suffix`` (see :func:`answer_tokens`).
    Longer than ``max_length``, it keeps its last ``max_length`` tokens: the harness cuts from the
    left, so the question stays and the oldest exemplars (and bos) go.
    """
    ids = tokenizer.encode(prompt, add_bos=tokenizer.adds_bos) + list(suffix)
    if max_length is None or len(ids) <= max_length:
        return ids, 0
    return ids[len(ids) - max_length :], len(ids) - max_length
