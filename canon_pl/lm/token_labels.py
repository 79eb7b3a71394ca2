"""Token labels the bundled text gives for free, for probing what a latent carries (docs/design.md 1.4, "k-sparse
probing").

The packaged text is reStructuredText (the Python documentation), so a token's role can be read off its context
without any annotator:

- ``code``: code against prose. A token is code when its first non-space character lies inside an inline literal
  (````x = 1````), an interpreted role (``:func:`len```), on a doctest line (one that starts with ``>>>`` or
  ``...``) or in a literal block (the indented lines after a paragraph that ends in ``::``, or inside a
  ``code-block`` / ``doctest`` / ``testcode`` directive); every other token with visible characters is prose.
- ``python_keyword``: among the *code* tokens that are a whole identifier (``str.isidentifier``), the Python keywords
  (``keyword.iskeyword``: ``def``, ``return``, ``None``...) against every other identifier.
- ``number``: a token made only of digits against every other token with visible characters.

Each label is ``int8 [n, seq]``: 1 (positive), 0 (negative) or -1 (outside that task's population: whitespace, a
non-identifier for ``python_keyword``). A context starts wherever the packer cut the text, so an inline literal
opened before the cut is read as prose: the labels are exact for everything the context shows.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

LABELS = ("code", "python_keyword", "number")
"""The tasks, in the order reports list them."""

INLINE_CODE = re.compile(r"``[^`\n]+``|:[\w:.+-]+:`[^`\n]+`")
"""Inline literals and interpreted roles."""
DOCTEST_LINE = re.compile(r"[ \t]*(?:>>>|\.\.\.)(?: |$)")
CODE_DIRECTIVE = re.compile(r"[ \t]*\.\. (?:code-block|code|sourcecode|doctest|testcode|testsetup|testoutput)::")

OUTSIDE, NEGATIVE, POSITIVE = -1, 0, 1


def opens_literal_block(line: str) -> bool:
    """Whether the indented lines after ``line`` are code: a paragraph ending in ``::`` (not another directive such
    as ``.. note::``) or a code directive."""
    stripped = line.strip()
    return bool(CODE_DIRECTIVE.match(line)) or (stripped.endswith("::") and not stripped.startswith(".. "))


def code_characters(text: str) -> Tensor:
    """``bool [len(text)]``: which characters of ``text`` are code (inline, doctest lines, literal blocks)."""
    inside = torch.zeros(len(text), dtype=torch.bool)
    for match in INLINE_CODE.finditer(text):
        inside[match.start():match.end()] = True
    start, block_indent = 0, None  # the indentation of the line that opened a literal block
    for line in text.splitlines(keepends=True):
        end, stripped = start + len(line), line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and stripped and indent <= block_indent:
            block_indent = None
        if (block_indent is not None and stripped) or DOCTEST_LINE.match(line):
            inside[start:end] = True
        elif opens_literal_block(line):
            block_indent = indent
        start = end
    return inside


def label_pieces(pieces: Sequence[str]) -> dict[str, list[int]]:
    """Each label of :data:`LABELS` for the consecutive text ``pieces`` of one context (one string per token)."""
    text = "".join(pieces)
    in_code = code_characters(text)
    labels: dict[str, list[int]] = {name: [] for name in LABELS}
    start = 0
    for piece in pieces:
        word = piece.strip()
        first = start + (len(piece) - len(piece.lstrip()))
        start += len(piece)
        if not word:
            for name in LABELS:
                labels[name].append(OUTSIDE)
            continue
        code = bool(in_code[first]) if first < len(text) else False
        labels["code"].append(POSITIVE if code else NEGATIVE)
        labels["number"].append(POSITIVE if word.isdigit() else NEGATIVE)
        labels["python_keyword"].append((POSITIVE if keyword.iskeyword(word) else NEGATIVE)
                                        if code and word.isidentifier() else OUTSIDE)
    return labels


def token_labels(tokens: Tensor, piece_of: Callable[[int], str]) -> dict[str, Tensor]:
    """tokens ``[n, seq]`` -> each label ``int8 [n, seq]``; ``piece_of(id)`` is a token's text (the tokenizer's
    decoding of that one id)."""
    pieces = {i: piece_of(i) for i in tokens.unique().tolist()}
    rows = [label_pieces([pieces[i] for i in row]) for row in tokens.tolist()]
    return {name: torch.tensor([row[name] for row in rows], dtype=torch.int8).reshape(tokens.shape)
            for name in LABELS}


def tokenizer_labels(tokenizer) -> Callable[[Tensor], dict[str, Tensor]]:
    """:func:`token_labels` with pieces decoded by a Hugging Face ``tokenizer``."""
    return lambda tokens: token_labels(tokens, lambda i: tokenizer.decode([i]))


__all__ = ["LABELS", "NEGATIVE", "OUTSIDE", "POSITIVE", "code_characters", "label_pieces", "opens_literal_block",
           "token_labels", "tokenizer_labels"]
