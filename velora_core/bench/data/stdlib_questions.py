"""The ``stdlib-mc`` task: "which function does this docstring describe?" from the stdlib corpus."""

from __future__ import annotations

import ast
import random
import re
from functools import lru_cache
from typing import Literal

from velora_core.bench.data.multiple_choice import MCQuestion
from velora_core.bench.data.sources import STDLIB_VALIDATION_FRACTION, SourceFile, source_corpus
from velora_core.contract.hashing import unit_hash

#: Share of standard-library files whose questions are ``stdlib-mc`` dev (k-shot exemplars).
STDLIB_MC_DEV_FRACTION = 0.03
#: ``stdlib-mc`` questions are the first docstring paragraph, cut to this many characters.
MAX_QUESTION_CHARS = 300


def _documented_functions(source: SourceFile) -> list[tuple[str, str]]:
    """``(name, docstring)`` of the public module-level functions and methods of one file."""
    try:
        tree = ast.parse(source.text)
    except SyntaxError:
        return []
    functions: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.append(node)
        elif isinstance(node, ast.ClassDef):
            functions += [m for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
    out = []
    for fn in functions:
        doc = ast.get_docstring(fn)
        if doc and not fn.name.startswith("_"):
            out.append((fn.name, doc))
    return out


def _question_text(name: str, docstring: str) -> str | None:
    """The docstring's first paragraph on one line, the function's own name blanked out as ``___``.

    Returns None for paragraphs too short to be a question (under three words).
    """
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    paragraph = re.sub(rf"\b{re.escape(name)}\b", "___", paragraph, flags=re.IGNORECASE)
    if len(paragraph.split()) < 3:
        return None
    if len(paragraph) > MAX_QUESTION_CHARS:
        paragraph = paragraph[:MAX_QUESTION_CHARS].rsplit(" ", 1)[0] + " ..."
    return paragraph


def _mc_split(path: str) -> Literal["train", "dev", "test"]:
    # Same hash as stdlib_split: test files are exactly the corpus' validation files.
    u = unit_hash("split:" + path)
    if u < STDLIB_VALIDATION_FRACTION:
        return "test"
    return "dev" if u < STDLIB_VALIDATION_FRACTION + STDLIB_MC_DEV_FRACTION else "train"


@lru_cache(maxsize=4)
def _stdlib_mc_items(root: str | None = None) -> dict[str, tuple[tuple[str, str], ...]]:
    """``(name, question text)`` per split, in file order; parsed once per process (seconds)."""
    found: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    counts: dict[str, int] = {}
    for source in source_corpus(root).files:
        for name, doc in _documented_functions(source):
            text = _question_text(name, doc)
            if text is not None:
                found[_mc_split(source.path)].append((name, text))
                counts[text] = counts.get(text, 0) + 1
    # A paragraph that occurs twice (overrides, aliases) does not identify one function.
    return {split: tuple(item for item in items if counts[item[1]] == 1) for split, items in found.items()}


@lru_cache(maxsize=8)
def stdlib_mc(seed: int = 0, root: str | None = None) -> dict[str, tuple[MCQuestion, ...]]:
    """The ``stdlib-mc`` task: ``{"train", "dev", "test"}`` -> questions, deterministic given ``seed``.

    Each question is a docstring paragraph (see :func:`_question_text`) and four public function
    names: the documented one and three distinct others drawn from the same split; the answer's
    position is uniform. A paragraph that occurs twice anywhere is dropped (it would not identify a
    function). Chance accuracy is 0.25. Each split's questions are in a seeded random order.
    """
    out: dict[str, tuple[MCQuestion, ...]] = {}
    for split, items in _stdlib_mc_items(root).items():
        rng = random.Random(f"stdlib-mc:{seed}:{split}")
        names = sorted({name for name, _ in items})
        if len(names) < 4:  # too few functions for three distractors (only in tiny test corpora)
            out[split] = ()
            continue
        questions = []
        for name, text in items:
            others = rng.sample(names, 4)
            distractors = [n for n in others if n != name][:3]
            answer = rng.randrange(4)
            choices = [*distractors[:answer], name, *distractors[answer:]]
            questions.append(MCQuestion(text, tuple(choices), answer))
        rng.shuffle(questions)
        out[split] = tuple(questions)
    return out
