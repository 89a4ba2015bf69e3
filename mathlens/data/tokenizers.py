"""Tokenizers: character-level (like nanoGPT's shakespeare_char) and byte-level BPE (trained with the
Hugging Face ``tokenizers`` library).

Both share one interface::

    tok = CharTokenizer.train(text)            # or BPETokenizer.train(text, vocab_size=512)
    ids = tok.encode(text)                     # list[int], each in [0, tok.vocab_size)
    assert tok.decode(ids) == text             # exact round trip
    tok.save("run/tokenizer")                  # JSON files only, no pickle
    tok = load_tokenizer("run/tokenizer")      # restores either kind

``train_tokenizer(kind, text, vocab_size)`` picks the kind by name (``"char"`` or ``"bpe"``).
Saved folders hold ``mathlens_tokenizer.json`` (kind, settings; the characters for ``char``) and, for
``bpe``, ``tokenizer.json`` in the Hugging Face format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mathlens.errors import MathlensError
from mathlens.io import write_json, write_text

MANIFEST = "mathlens_tokenizer.json"
_CUT = re.compile(r"\n(?=\S)")
TOKENIZER_KINDS = ("char", "bpe")


class CharTokenizer:
    """One token per Unicode character; the vocabulary is the sorted set of characters of the corpus."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise MathlensError("a character tokenizer needs a non-empty list of single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        if not text:
            raise MathlensError("cannot build a character vocabulary from an empty text")
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise MathlensError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for a whole corpus: ``ids: (len(text),)`` int64."""
        lut = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int64)
        lut[[ord(c) for c in self.chars]] = np.arange(self.vocab_size)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = lut[np.minimum(codes, len(lut) - 1)]
        bad = (ids < 0) | (codes >= len(lut))
        if bad.any():
            raise MathlensError(f"character {chr(codes[bad.argmax()])!r} is not in the tokenizer's vocabulary")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self.chars[int(i)] for i in ids)
        except IndexError:
            raise MathlensError(f"token id out of range [0, {self.vocab_size})") from None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "chars": self.chars}

    def fingerprint(self) -> str:
        return _hash(json.dumps(self.to_dict(), ensure_ascii=True))

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        write_json(directory / MANIFEST, self.to_dict())
        return directory


class BPETokenizer:
    """Byte-level BPE (GPT-2 style byte alphabet, no added prefix space): any text round-trips exactly.

    Training is deterministic: the same text and ``vocab_size`` give the same merges (there is no seed).
    """

    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int = 1024, min_frequency: int = 2) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges (at most) over the 256 byte symbols from ``text``."""
        if not text:
            raise MathlensError("cannot train a BPE tokenizer on an empty text")
        if not 256 <= vocab_size <= 2**20:
            raise MathlensError(f"bpe vocab_size must be in [256, 1048576], got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_array(self, text: str) -> np.ndarray:
        """Whole corpus, encoded in newline-aligned chunks (in parallel by ``tokenizers``)."""
        encs = self.tokenizer.encode_batch(list(_chunks(text)))
        return np.fromiter((i for e in encs for i in e.ids), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise MathlensError(f"token id out of range [0, {self.vocab_size})")
        return self.tokenizer.decode(ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    def fingerprint(self) -> str:
        return _hash(self.tokenizer.to_str())

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        write_text(directory / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        write_json(directory / MANIFEST, self.to_dict())
        return directory


def train_tokenizer(kind: str, text: str, vocab_size: int | None = None) -> CharTokenizer | BPETokenizer:
    """``kind="char"`` (``vocab_size`` must be None) or ``kind="bpe"`` (``vocab_size`` default 1024)."""
    if kind == "char":
        if vocab_size is not None:
            raise MathlensError("vocab_size is set by the corpus for the char tokenizer; leave it unset")
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size=1024 if vocab_size is None else vocab_size)
    raise MathlensError(f"unknown tokenizer {kind!r}; known: {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(directory: str | os.PathLike) -> CharTokenizer | BPETokenizer:
    """Restore a tokenizer written by ``save``; MathlensError for a missing or corrupt folder."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise MathlensError(f"no tokenizer in {directory} (missing {MANIFEST})")
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        kind = meta["kind"]
        if kind == "char":
            return CharTokenizer(meta["chars"])
        if kind == "bpe":
            tok = BPETokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")))
            if tok.vocab_size != meta["vocab_size"]:
                raise ValueError("vocab size mismatch")
            return tok
    except MathlensError:
        raise
    except Exception as e:
        raise MathlensError(f"corrupt tokenizer in {directory} ({type(e).__name__}: {e})".splitlines()[0]) from None
    raise MathlensError(f"unknown tokenizer kind {kind!r} in {manifest}; known: {', '.join(TOKENIZER_KINDS)}")


def _chunks(text: str, size: int = 1 << 16):
    """Pieces of about ``size`` characters, each cut after a newline that is followed by a non-space.

    The byte-level pre-tokenizer splits there anyway, so encoding chunk by chunk gives exactly the ids
    of encoding the whole text at once."""
    start = 0
    while start < len(text):
        m = _CUT.search(text, start + size)
        end = len(text) if m is None else m.end()
        yield text[start:end]
        start = end


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()[:16]
