"""`mathlens sweep` bad input that used to crash, hang or write a sweep directory: an output location that is
a file, a missing / unknown / empty / binary corpus, an unreachable Ray address. Each is one line on stderr
naming the problem, exit code 2, and nothing created at the output location."""

from __future__ import annotations

import socket

import pytest
from test_sweep_run import write_corpus, write_sweep

from mathlens.cli import main
from mathlens.errors import MathlensError
from mathlens.sweep.ray_backend import check_ray_address, ray_endpoint


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def sweep_file(tmp_path, corpus, name="b"):
    """A one-point sweep whose sweep.out is tmp_path/out (nothing there until a point is written)."""
    return write_sweep(tmp_path, '"run.seed" = [0]', max_iters=2, eval_interval=2, name=name, parallel=1,
                       corpus=corpus)


@pytest.mark.parametrize("target", ["somefile", "somefile/sub"])
def test_out_under_a_plain_file_is_one_line(tmp_path, capsys, target):
    path = sweep_file(tmp_path, write_corpus(tmp_path / "corpus.txt"))
    somefile = tmp_path / "somefile"
    somefile.write_text("not a folder\n")
    out = tmp_path / target
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert f"{somefile} is not a folder" in err and "--out" in err, err
    assert somefile.read_text() == "not a folder\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.toml", "corpus.txt", "somefile"]


def test_sweep_directory_that_is_a_file_is_one_line(tmp_path, capsys):
    path = sweep_file(tmp_path, write_corpus(tmp_path / "corpus.txt"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b").write_text("")  # <out>/<name> is a file
    assert main(["sweep", str(path), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert f"{tmp_path / 'out' / 'b'} is not a folder" in err and "sweep.out" in err, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]


def _missing(tmp_path):
    return tmp_path / "no-such-dir" / "missing.txt", "corpus file or folder not found"


def _unknown(tmp_path):
    return "no_such_corpus", "unknown corpus 'no_such_corpus'"


def _empty(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    return tmp_path / "empty.txt", "corpus file is empty"


def _binary(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    return tmp_path / "blob.bin", "corpus file is binary"


@pytest.mark.parametrize("make", [_missing, _unknown, _empty, _binary], ids=["missing", "unknown", "empty", "binary"])
def test_bad_base_corpus_is_one_line_before_anything_is_written(tmp_path, capsys, make):
    corpus, match = make(tmp_path)
    path = sweep_file(tmp_path, corpus)
    assert main(["sweep", str(path), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert match in err and "data.corpus" in err and str(path) in err, err
    assert not (tmp_path / "out").exists()  # no sweep directory, no results.json(l)


def test_bad_corpus_in_the_grid_names_the_point(tmp_path, capsys):
    good = write_corpus(tmp_path / "corpus.txt")
    path = write_sweep(tmp_path, f'"data.corpus" = ["{good}", "{tmp_path / "gone.txt"}"]', name="g", parallel=1)
    assert main(["sweep", str(path), "--quiet"]) == 2
    err = one_error_line(capsys)
    assert "point corpus=" in err and "corpus file or folder not found" in err and "gone.txt" in err, err
    assert not (tmp_path / "out").exists()


def _free_port() -> int:
    with socket.socket() as s:  # bound but never listening: a connection to it is refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_ray_address_is_one_line_and_fast(tmp_path, capsys, address):
    # the reachability check runs before ray is imported: this test needs no ray and no cluster
    path = sweep_file(tmp_path, write_corpus(tmp_path / "corpus.txt"))
    out = tmp_path / "rayout"
    assert main(["sweep", str(path), "--out", str(out), "--ray-address", address, "--quiet"]) == 2
    err = one_error_line(capsys)
    assert f"cannot reach Ray at {address!r}" in err, err
    assert not out.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["bogus", "host:port", "host:0", ":6379", "127.0.0.1:99999"])
def test_malformed_ray_address_is_one_line(tmp_path, capsys, address):
    path = sweep_file(tmp_path, write_corpus(tmp_path / "corpus.txt"))
    assert main(["sweep", str(path), "--out", str(tmp_path / "rayout"), "--ray-address", address]) == 2
    err = one_error_line(capsys)
    assert f"--ray-address {address!r} is invalid" in err, err
    assert not (tmp_path / "rayout").exists()


def test_ray_address_forms():
    assert ray_endpoint("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert ray_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert ray_endpoint("[::1]:6379") == ("::1", 6379)
    # left to Ray: it resolves these itself
    for address in ("auto", "local", "ray://head.example", "anyscale://cluster"):
        assert ray_endpoint(address) is None
        check_ray_address(address)  # no connection attempted, no error
    port = _free_port()
    with pytest.raises(MathlensError, match=f"cannot reach Ray at '127.0.0.1:{port}'"):
        check_ray_address(f"127.0.0.1:{port}", timeout=2)
    with socket.socket() as server:  # something listening: reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}", timeout=2)
