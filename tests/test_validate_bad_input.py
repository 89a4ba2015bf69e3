"""`mathlens validate` and `mathlens report` on bad input: one line on stderr, exit code 2, and nothing created or
changed at the output location (no meta.json left behind, results.json / report.html untouched)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from mathlens.cli import main

RECORD = "experiments/01-block-is-lie-step.json"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished quick run of experiment 1 only (a few seconds); tests copy it."""
    out = tmp_path_factory.mktemp("validate-bad") / "run"
    assert main(["validate", "--suite", "quick", "--only", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(small_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(small_run, dst)
    return dst


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes (None for a folder): equal snapshots = nothing created or changed."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n") and "Traceback" not in err, err
    return err.strip()


# validate: --only, --device, --out are checked before anything is written --------------------------------------
@pytest.mark.parametrize("only, needle", [
    ("99", "unknown experiment '99'"), ("abc", "unknown experiment 'abc'"), ("0", "unknown experiment '0'"),
    ("1,nosuch", "unknown experiment 'nosuch'"), (",", "names no experiment"),
])
def test_validate_bad_only_creates_nothing(only, needle, tmp_path, capsys):
    out = tmp_path / "v1"
    assert needle in one_line_exit_2(["validate", "--suite", "quick", "--out", str(out), "--only", only], capsys)
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--only", "99"], "unknown experiment '99'"),
    (["--only", "1", "--device", "tpu"], "--device = 'tpu' is not a device"),
])
def test_validate_without_out_creates_no_runs_folder(extra, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert needle in one_line_exit_2(["validate", "--suite", "quick", *extra], capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device, needle", [
    ("tpu", "--device = 'tpu' is not a device"),
    ("", "--device = '' is not a device"),
    pytest.param("cuda", "--device = 'cuda' but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_validate_bad_device_creates_nothing(device, needle, tmp_path, capsys):
    out = tmp_path / "v"
    argv = ["validate", "--suite", "quick", "--out", str(out), "--only", "1", "--device", device]
    assert needle in one_line_exit_2(argv, capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_validate_cuda_suite_without_gpu(tmp_path, capsys):
    out = tmp_path / "v"
    err = one_line_exit_2(["validate", "--suite", "gpu", "--out", str(out), "--only", "1"], capsys)
    assert "suite 'gpu' needs a CUDA GPU" in err and not out.exists()


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-file"])
def test_validate_out_is_a_plain_file(under, tmp_path, capsys):
    plain = tmp_path / "somefile"
    plain.write_bytes(b"keep me")
    out = plain / "v" if under else plain
    err = one_line_exit_2(["validate", "--suite", "quick", "--out", str(out), "--only", "1"], capsys)
    assert f"{plain} is not a folder" in err
    assert snapshot(tmp_path) == {"somefile": b"keep me"}


# validate: resuming a run whose files are bad rewrites nothing ---------------------------------------------------
def _replace_with_dir(path: Path):
    path.unlink()
    path.mkdir()


BAD_META = {
    "corrupt": (lambda p: p.write_text("{bad"), "is not valid JSON"),
    "list": (lambda p: p.write_text("[1, 2]"), "holds a list, not an object"),
    "suite-not-a-table": (lambda p: p.write_text('{"suite": "quick"}'), "'suite' is a string, not an object"),
    "no-suite-name": (lambda p: p.write_text('{"suite": {}}'), "'suite.name' is missing"),
    "not-utf8": (lambda p: p.write_bytes(b'{"suite": "\xff\xfe"}'), "is not UTF-8"),
    "directory": (_replace_with_dir, "is a directory"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_validate_resume_bad_meta_rewrites_nothing(case, run, capsys):
    spoil, needle = BAD_META[case]
    spoil(run / "meta.json")
    before = snapshot(run)
    err = one_line_exit_2(["validate", "--suite", "quick", "--out", str(run), "--only", "1"], capsys)
    assert "meta.json" in err and needle in err
    assert snapshot(run) == before


@pytest.mark.parametrize("spoil, needle", [
    (lambda run: (run / RECORD).write_text("{bad"), "01-block-is-lie-step.json is not valid JSON"),
    (lambda run: (run / "report.html").unlink() or (run / "report.html").mkdir(), "report.html is a directory"),
    (lambda run: shutil.rmtree(run / "figures") or (run / "figures").write_text("x"), "figures is not a directory"),
], ids=["corrupt-record", "report-is-dir", "figures-is-file"])
def test_validate_resume_bad_run_dir_rewrites_nothing(spoil, needle, run, capsys):
    spoil(run)
    before = snapshot(run)
    assert needle in one_line_exit_2(["validate", "--suite", "quick", "--out", str(run), "--only", "1"], capsys)
    assert snapshot(run) == before


# report: everything is read and checked first, then written ------------------------------------------------------
def _record(**changes):
    def spoil(run):
        rec = json.loads((run / RECORD).read_text())
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node = rec
            for key in parents:
                node = node[key]
            node[last] = value
        (run / RECORD).write_text(json.dumps(rec))
    return spoil


BAD_REPORT = {
    "meta-list": (lambda run: (run / "meta.json").write_text("[1]"), "meta.json holds a list, not an object"),
    "meta-not-utf8": (lambda run: (run / "meta.json").write_bytes(b"\xff"), "meta.json is not UTF-8"),
    "record-list": (lambda run: (run / RECORD).write_text("[]"), "01-block-is-lie-step.json holds a list"),
    "record-no-number": (lambda run: (run / RECORD).write_text('{"experiment": {"id": "x"}, "status": "ok"}'),
                         "01-block-is-lie-step.json: 'experiment.number' is missing"),
    "record-groups": (_record(experiment__groups="a"), "'experiment.groups' is a string, not a list"),
    "record-no-ci": (_record(outcome__ci=None), "'outcome.ci' is null, not an object"),
    "record-values": (_record(outcome__groups={"g": ["x"]}), "'outcome.groups.g' must be a list of numbers"),
    "record-is-dir": (lambda run: (run / "experiments" / "zz.json").mkdir(), "zz.json is a directory"),
    "report-is-dir": (lambda run: _replace_with_dir(run / "report.html"), "report.html is a directory"),
    "results-is-dir": (lambda run: _replace_with_dir(run / "results.json"), "results.json is a directory"),
}


@pytest.mark.parametrize("case", list(BAD_REPORT))
def test_report_bad_input_writes_nothing(case, run, capsys):
    spoil, needle = BAD_REPORT[case]
    spoil(run)
    before = snapshot(run)
    assert needle in one_line_exit_2(["report", str(run)], capsys)
    assert snapshot(run) == before


def test_report_of_a_plain_file(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert f"run directory {plain} is not a directory" in one_line_exit_2(["report", str(plain)], capsys)
    assert plain.read_text() == "x"


def test_report_accepts_a_failed_experiment_record(run, capsys):
    rec = json.loads((run / RECORD).read_text())
    rec.pop("outcome")
    rec.update(status="error", error="RuntimeError: boom", traceback="...")
    (run / RECORD).write_text(json.dumps(rec))
    assert main(["report", str(run)]) == 0
    assert "RuntimeError: boom" in (run / "report.html").read_text()
    assert json.loads((run / "results.json").read_text())["experiments"][0]["status"] == "error"
