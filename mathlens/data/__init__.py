"""Data: corpora, tokenizers, token datasets and synthetic sources with known answers.

from mathlens.data import load_corpus, CharTokenizer, TokenDataset
corpus = load_corpus("tinyshakespeare")          # or "shakespeare", a path, a folder, ...
data = TokenDataset.from_corpus(corpus, CharTokenizer.train(corpus.text))
x, y = data.get_batch("train", 32, 128, seed=0)  # (32, 128) int64
"""

from mathlens.data.corpora import (
    CORPORA,
    DEFAULT_CORPUS,
    EMBEDDED_CORPORA,
    ONLINE_CORPORA,
    Corpus,
    cache_dir,
    check_corpus_length,
    load_corpus,
    read_text_file,
)
from mathlens.data.dataset import IGNORE_INDEX, SPLITS, TokenDataset
from mathlens.data.markov import EntropyEstimate, HiddenMarkovModel, MarkovChain
from mathlens.data.synthetic import AssociativeRecall, ModularArithmetic, SparseBoolean
from mathlens.data.synthetic_base import SyntheticTask
from mathlens.data.tokenizers import (
    TOKENIZER_KINDS,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    train_tokenizer,
)

__all__ = [
    "CORPORA",
    "DEFAULT_CORPUS",
    "EMBEDDED_CORPORA",
    "IGNORE_INDEX",
    "ONLINE_CORPORA",
    "SPLITS",
    "TOKENIZER_KINDS",
    "AssociativeRecall",
    "BPETokenizer",
    "CharTokenizer",
    "Corpus",
    "EntropyEstimate",
    "HiddenMarkovModel",
    "MarkovChain",
    "ModularArithmetic",
    "SparseBoolean",
    "SyntheticTask",
    "TokenDataset",
    "cache_dir",
    "check_corpus_length",
    "load_corpus",
    "load_tokenizer",
    "read_text_file",
    "train_tokenizer",
]
