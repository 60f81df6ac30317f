"""Text normalization before tokenizing: what phones, word processors and web pages write, as a keyboard
writes it, so a typographic apostrophe or a non-breaking space does not turn known words into unknown ones.

Rules are named in the tokenizer spec (`normalization`, applied in its order) and a name never changes
meaning: a changed rule would get a new name. Each keeps a map from the normalized text back to the
original characters, so explanations show normalized words at their original spans.

- "quotes": typographic single quotes and apostrophes (‘ ’ ‚ ‛ ′ ´ ʼ ＇ and the like) -> ', double quotes
  (“ ” „ ‟ ″ « » ＂) -> ".
- "dashes": hyphens, dashes and the minus sign (‐ ‑ ‒ – — ― − ﹘ ﹣ －) -> -.
- "nfkc": Unicode NFKC (full-width forms, ligatures, composed accents, ellipsis -> ...), applied to each
  character with the combining marks that follow it (so every normalized character comes from one span).
- "spaces": every Unicode space and line or paragraph separator (and the ASCII controls CR, VT, FF and
  the information separators, which Keras's filters keep) -> " ".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# Also the characters NFKC turns into these (vertical dashes, super- and subscript minus, multiple primes,
# the Greek numeral sign), since these rules run before "nfkc" (which would split ´ from its word).
SINGLE_QUOTES = "\u2018\u2019\u201a\u201b\u2032\u2035\u00b4\u02b9\u02bc\u02bb\u02bd\u055a\uff07\u0374"
DOUBLE_QUOTES = "\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb\u02ba\u301d\u301e\uff02\u2034\u2037\u2057"
DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2e3a\u2e3b\ufe58\ufe63\uff0d\ufe31\ufe32\u207b\u208b"
ASCII_SPACES = "\r\x0b\x0c\x1c\x1d\x1e\x1f"
# Every character above ASCII for which str.isspace() holds (Unicode 15), and the zero-width space and BOM.
UNICODE_SPACES = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000" \
    "\u200b\ufeff"

TABLES = {
    "quotes": str.maketrans({**dict.fromkeys(SINGLE_QUOTES, "'"), **dict.fromkeys(DOUBLE_QUOTES, '"')}),
    "dashes": str.maketrans(dict.fromkeys(DASHES, "-")),
    "spaces": str.maketrans(dict.fromkeys(ASCII_SPACES + UNICODE_SPACES, " ")),
}
# Each table's characters as one regular expression: str.translate looks every character of a non-ASCII text up
# in its table (115 us for an average review, three tables a text), while these characters are rare: the
# expression finds them in a C scan and only they are replaced.
SEARCHES = {name: re.compile("[" + re.escape("".join(map(chr, table))) + "]") for name, table in TABLES.items()}
REPLACE = {name: {chr(k): v for k, v in table.items()} for name, table in TABLES.items()}
RULES = (*TABLES, "nfkc")
DEFAULT = ["quotes", "dashes", "nfkc", "spaces"]  # new packages trained on raw text

# (normalized text, for each of its characters the [start, end) span in the original) or None where the
# normalized text has the original's length and positions.
Origin = tuple[list[int], list[int]] | None


def check_rules(rules: list[str]) -> None:
    """Raises ValueError for a rule this version does not know (a package from a newer trainer)."""
    unknown = [r for r in rules if r not in RULES]
    if unknown or len(set(rules)) != len(rules):
        raise ValueError(f"unknown or repeated normalization rules {rules}; known: {list(RULES)}")


def normalizer(rules: list[str]) -> Callable[[str], tuple[str, Origin]] | None:
    """A function text -> (normalized text, Origin) applying `rules` in order; None for no rules."""
    check_rules(rules)
    if not rules:
        return None
    ascii_table = {k: v for name in rules if name == "spaces" for k, v in TABLES[name].items() if k < 128}

    def normalize(text: str) -> tuple[str, Origin]:
        if text.isascii():  # only the ASCII controls of "spaces" can change: positions stay
            return (text.translate(ascii_table) if ascii_table else text), None
        origin: Origin = None
        for name in rules:
            if name != "nfkc":
                text = SEARCHES[name].sub(_replacer(REPLACE[name]), text)  # one character for one: positions stay
            elif not unicodedata.is_normalized("NFKC", text):
                text, origin = _nfkc(text, origin)
        return text, origin

    return normalize


def _replacer(table: dict[str, str]) -> Callable[[re.Match[str]], str]:
    return lambda found: table[found.group()]


def _nfkc(text: str, origin: Origin) -> tuple[str, Origin]:
    """NFKC of each character with its following combining marks, and where each output character came from
    (composed with an earlier rule's origin)."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        piece = unicodedata.normalize("NFKC", text[i:j])
        a, b = (i, j) if origin is None else (origin[0][i], origin[1][j - 1])
        out.append(piece)
        starts += [a] * len(piece)
        ends += [b] * len(piece)
        i = j
    return "".join(out), (starts, ends)
