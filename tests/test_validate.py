"""`mathlens validate`: the quick suite end to end, the report (also in headless Chromium), verdict rules."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mathlens.cli import main
from mathlens.experiments.base import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    combine_verdicts,
    verdict_above,
    verdict_below,
    verdict_difference,
    verdict_within,
)
from mathlens.experiments.registry import all_experiments


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "run"
    assert main(["validate", "--suite", "quick", "--out", str(out)]) == 0
    return out


def test_registry_has_all_18_claims_in_order():
    exps = all_experiments()
    assert [e.number for e in exps] == list(range(1, 19))
    for e in exps:
        assert e.claim and e.source and e.prediction and e.method and e.groups


def test_quick_suite_every_claim_has_a_verdict_and_figure(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    recs = results["experiments"]
    assert len(recs) == 18
    for rec in recs:
        assert rec["status"] == "ok", (rec["experiment"]["id"], rec.get("error"))
        out = rec["outcome"]
        assert out["verdict"] in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
        assert out["ci"]["low"] <= out["ci"]["estimate"] <= out["ci"]["high"] or np.isclose(out["ci"]["low"], out["ci"]["high"])
        assert (quick_run / "figures" / out["figure"]).stat().st_size > 1000
        assert len(next(iter(out["groups"].values()))) >= 1
    assert results["meta"]["suite"]["name"] == "quick" and len(results["meta"]["suite"]["seeds"]) >= 3
    # the exact identities hold whatever the scale
    by_id = {r["experiment"]["number"]: r["outcome"] for r in recs}
    assert by_id[1]["verdict"] == SUPPORTED and by_id[1]["ci"]["high"] < 1e-12
    assert by_id[2]["verdict"] == SUPPORTED


def test_report_is_self_contained_and_rebuilds(quick_run):
    html = (quick_run / "report.html").read_text()
    assert html.count('class="claim"') == 18
    assert html.count("data:image/png;base64,") == 18
    assert "http://" not in html and "https://" not in html  # no network, no CDN
    before = html
    (quick_run / "report.html").unlink()
    assert main(["report", str(quick_run)]) == 0
    assert (quick_run / "report.html").read_text() == before


def test_resume_skips_finished_experiments(quick_run, capsys):
    rec = quick_run / "experiments" / "06-attention-clustering.json"
    stamp = rec.stat().st_mtime_ns
    (quick_run / "experiments" / "07-s1-s2-confinement.json").unlink()
    assert main(["validate", "--suite", "quick", "--out", str(quick_run), "--only", "6,7"]) == 0
    log = capsys.readouterr().out
    assert "06-attention-clustering: done already" in log
    assert re.search(r"07-s1-s2-confinement: (supported|contradicted|inconclusive) \(", log)  # run again
    assert rec.stat().st_mtime_ns == stamp


def test_report_escapes_text_from_data(quick_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    p = run / "experiments" / "01-block-is-lie-step.json"
    rec = json.loads(p.read_text())
    rec["experiment"]["title"] = "<script>alert(1)</script>"
    p.write_text(json.dumps(rec))
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize("argv, needle", [
    (["validate", "--suite", "huge"], "unknown suite 'huge'"),
    (["validate", "--suite", "quick", "--only", "99"], "unknown experiment '99'"),
    (["report", "/nonexistent/run"], "run directory not found"),
])
def test_bad_input_one_line_exit_2(argv, needle, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "validate" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_report_of_a_directory_without_results(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no meta.json" in capsys.readouterr().err


def test_resume_refuses_a_different_suite(quick_run, capsys):
    assert main(["validate", "--suite", "default", "--out", str(quick_run), "--only", "1"]) == 2
    assert "holds a 'quick' run" in capsys.readouterr().err


# verdict rules ------------------------------------------------------------------------------------------
def test_verdict_rules():
    assert verdict_below([1e-15, 2e-15, 1.5e-15], 1e-12)[1] == SUPPORTED
    assert verdict_below([1.0, 1.1, 0.9], 1e-12)[1] == CONTRADICTED
    assert verdict_above([0.2, 0.3, 0.25], 0.0)[1] == SUPPORTED
    assert verdict_within([1.0, 1.02, 0.98], 0.85, 1.15)[1] == SUPPORTED
    assert verdict_within([2.0, 2.1, 1.9], 0.85, 1.15)[1] == CONTRADICTED
    assert verdict_within([0.5, 1.5, 1.0], 0.85, 1.15)[1] == INCONCLUSIVE
    # groups that do not differ beyond the CI: inconclusive
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 5), rng.normal(0, 1, 5)
    assert verdict_difference(a, b, ">")[1] == INCONCLUSIVE
    assert verdict_difference(a + 10, b, ">")[1] == SUPPORTED
    assert verdict_difference(a + 10, b, "<")[1] == CONTRADICTED
    # paired by seed (default): a shift common to both conditions of each seed cancels; as independent groups
    # (Welch) the same numbers do not differ beyond the seed-to-seed spread
    base = np.array([0.0, 5.0, -4.0])
    treated = base + np.array([1.0, 1.1, 0.9])
    ci, v, rule = verdict_difference(treated, base, ">")
    assert v == SUPPORTED and ci.method == "paired-t" and ci.estimate == pytest.approx(1.0)
    assert verdict_difference(treated, base, ">", paired=False)[1] == INCONCLUSIVE
    # three seeds that all agree in sign are not enough when they spread widely (t_{2, 0.975} = 4.30)
    assert verdict_difference([111.7, 63.5, 62.6], [22.9, 24.3, 36.6], ">")[1] == INCONCLUSIVE
    assert combine_verdicts(SUPPORTED, SUPPORTED) == SUPPORTED
    assert combine_verdicts(SUPPORTED, INCONCLUSIVE) == INCONCLUSIVE
    assert combine_verdicts(INCONCLUSIVE, CONTRADICTED) == CONTRADICTED


# the report in a real browser ---------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--metrics-recording-only", "--mute-audio"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/test installs Debian's chromium)")
def test_report_renders_in_headless_chromium(quick_run, tmp_path):
    url = (quick_run / "report.html").resolve().as_uri()
    profile = tmp_path / "profile"
    probe = (
        "<script>window.onload=()=>{const imgs=[...document.images];"
        "const ok=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;"
        "const rows=document.querySelectorAll('#claims tr').length-1;"
        "document.title=`imgs=${imgs.length};ok=${ok};rows=${rows}`;}</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text((quick_run / "report.html").read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<title>imgs=18;ok=18;rows=18</title>" in dom.stdout, dom.stderr[-2000:]
    shot = quick_run / "report.png"
    subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600",
                    f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
    Path(tmp_path / "screenshot-path.txt").write_text(str(shot))
