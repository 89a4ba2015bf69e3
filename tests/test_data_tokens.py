"""Tokenizers (round trips, save/load) and token datasets (splits, batches, memmap cache, full-split eval)."""

import json

import numpy as np
import pytest
import torch

from mathlens.data import (
    IGNORE_INDEX,
    BPETokenizer,
    CharTokenizer,
    Corpus,
    TokenDataset,
    load_tokenizer,
    train_tokenizer,
)
from mathlens.errors import MathlensError

UNICODE = "Ünïcödé — 日本語 🎭 café\n\n   indented\ttab\r\n"


@pytest.fixture(scope="module")
def text(tinyshakespeare_path):
    return open(tinyshakespeare_path, encoding="utf-8").read()[:200_000] + UNICODE


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHLENS_CACHE", str(tmp_path / "cache"))


def test_char_tokenizer_round_trip_and_save(text, tmp_path):
    tok = CharTokenizer.train(text)
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert tok.decode(ids) == text and np.array_equal(tok.encode_array(text), ids)
    assert tok.encode("\n ") == [tok.chars.index("\n"), tok.chars.index(" ")]
    tok.save(tmp_path / "t")
    back = load_tokenizer(tmp_path / "t")
    assert isinstance(back, CharTokenizer) and back.chars == tok.chars and back.fingerprint() == tok.fingerprint()
    with pytest.raises(MathlensError, match="not in the tokenizer"):
        tok.encode("€")
    with pytest.raises(MathlensError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_bpe_round_trip_deterministic_and_save(text, tmp_path):
    tok = BPETokenizer.train(text, vocab_size=400)
    assert tok.vocab_size == 400
    ids = tok.encode(text)
    assert tok.decode(ids) == text and np.array_equal(tok.encode_array(text), ids)
    assert len(ids) < 0.6 * len(text.encode())  # merges compress
    for s in (UNICODE, "never seen: ∮ ∂ ℵ", ""):
        assert tok.decode(tok.encode(s)) == s
    assert BPETokenizer.train(text, vocab_size=400).fingerprint() == tok.fingerprint()  # deterministic
    tok.save(tmp_path / "b")
    back = load_tokenizer(tmp_path / "b")
    assert isinstance(back, BPETokenizer) and back.encode(text) == ids
    assert not list(tmp_path.rglob("*.pkl"))


def test_tokenizer_errors(tmp_path):
    with pytest.raises(MathlensError, match="unknown tokenizer"):
        train_tokenizer("wordpiece", "abc")
    with pytest.raises(MathlensError, match="vocab_size"):
        train_tokenizer("bpe", "abc", vocab_size=10)
    with pytest.raises(MathlensError, match="missing"):
        load_tokenizer(tmp_path)
    (tmp_path / "mathlens_tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MathlensError, match="corrupt tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "mathlens_tokenizer.json").write_text(json.dumps({"kind": "bpe", "vocab_size": 300}))
    with pytest.raises(MathlensError, match="corrupt tokenizer"):
        load_tokenizer(tmp_path)  # tokenizer.json missing


def _dataset(n=1000, **kw):
    text = "".join(chr(97 + i % 26) for i in range(n))
    return TokenDataset.from_corpus(Corpus("abc", text, "test"), CharTokenizer.train(text), **kw), text


def test_split_sizes_and_memmap_cache(tmp_path, monkeypatch):
    data, text = _dataset(1001)
    assert data.n_train == 901 and len(data.split("train")) == 901 and len(data.split("val")) == 100
    assert isinstance(data.tokens, np.memmap) and data.tokens.dtype == np.uint16 and not data.cached
    assert data.path.is_file() and data.path.stat().st_size == 2 * 1001
    assert data.to_dict()["n_val"] == 100
    monkeypatch.setattr(CharTokenizer, "encode_array", lambda self, t: pytest.fail("re-encoded"))
    again, _ = _dataset(1001)
    assert again.cached and np.array_equal(again.tokens, data.tokens)
    assert CharTokenizer.train(text).decode(again.split("train")) == text[:901]
    with pytest.raises(MathlensError, match="unknown split"):
        data.split("test")


def test_get_batch_shapes_shift_and_reproducibility():
    data, _ = _dataset(5000, cache=False)
    x, y = data.get_batch("train", 8, 16, seed=3)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal((x + 1) % 26, y)  # abc... stream: y = next letter
    x2, y2 = data.get_batch("train", 8, 16, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    b1 = [data.get_batch("val", 4, 8, g1)[0] for _ in range(3)]
    b2 = [data.get_batch("val", 4, 8, g2)[0] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(b1, b2)) and not torch.equal(b1[0], b1[1])
    with pytest.raises(MathlensError, match="exactly one of generator"):
        data.get_batch("train", 2, 4)


@pytest.mark.parametrize("block_size, batch_size", [(7, 3), (10, 4), (99, 2), (109, 1), (1, 64)])
def test_eval_batches_cover_every_target_once(block_size, batch_size):
    tokens = np.arange(1100, dtype=np.uint32)  # token value = position, so windows are identifiable
    data = TokenDataset(tokens, vocab_size=1100, n_train=990)  # val = 110 tokens -> 109 targets
    counts = np.zeros(1100, dtype=int)
    for x, y in data.iter_eval_batches("val", batch_size, block_size):
        assert x.shape == y.shape and x.shape[1] == block_size and x.shape[0] <= batch_size
        keep = y != IGNORE_INDEX
        assert torch.equal(y[keep], (x + 1)[keep])  # targets are the next tokens
        np.add.at(counts, y[keep].numpy(), 1)
    assert (counts[991:] == 1).all() and counts[:991].sum() == 0


def test_corpus_shorter_than_context():
    data, _ = _dataset(100, cache=False)  # val = 10 tokens
    with pytest.raises(MathlensError, match="shorter than one context"):
        data.get_batch("val", 2, 10, seed=0)
    with pytest.raises(MathlensError, match="shorter than one context"):
        next(data.iter_eval_batches("val", 2, 10))
    assert next(data.iter_eval_batches("val", 2, 9))[0].shape == (1, 9)  # exactly one context fits
