"""The self-contained HTML report of a validate run: no network, no CDN, figures inline, text escaped.

Reads the run's records (checked by :func:`mathlens.experiments.runner.load_results`) and ``figures/``.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from mathlens.errors import MathlensError
from mathlens.io import write_json, write_text

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:36px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
.sub{color:#5b6670;margin:0 0 20px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px}
th,td{border:1px solid #e1e5ea;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.supported{background:#1f8a4c}.contradicted{background:#c0392b}.inconclusive{background:#b07d12}.error{background:#6c5ce7}
section.claim{background:#fff;border:1px solid #e1e5ea;border-radius:8px;padding:8px 20px 16px;margin:18px 0}
section.claim h3{margin:10px 0 6px} dl{display:grid;grid-template-columns:150px 1fr;gap:4px 14px;margin:8px 0}
dt{font-weight:600;color:#44505b} dd{margin:0}
figure{margin:12px 0;text-align:center} figure img{max-width:100%;border:1px solid #eee}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f3f4f6;padding:8px;overflow:auto;max-height:260px}
.num td:first-child{font-family:ui-monospace,Menlo,monospace}
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list) and all(isinstance(v, (int, float)) for v in x) and len(x) <= 12:
        return "[" + ", ".join(_fmt(float(v)) for v in x) + "]"
    if isinstance(x, (dict, list)):
        s = json.dumps(x, default=str)
        return s if len(s) <= 300 else s[:297] + "..."
    return str(x)


def _badge(verdict: str) -> str:
    cls = verdict if verdict in ("supported", "contradicted", "inconclusive") else "error"
    return f'<span class="badge {cls}">{esc(verdict)}</span>'


def _figure(run_dir: Path, name: str | None, alt: str) -> str:
    if not name:
        return ""
    path = run_dir / "figures" / Path(name).name
    if not path.is_file():
        return f"<p><em>figure {esc(name)} is missing</em></p>"
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as e:
        raise MathlensError(f"cannot read figure {path}: {e.strerror or e}") from None
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></figure>'


def _claim_section(run_dir: Path, rec: dict) -> str:
    e, out = rec["experiment"], rec.get("outcome")
    verdict = out["verdict"] if out else "error"
    parts = [f'<section class="claim" id="{esc(e["id"])}"><h3>{esc(e["number"])}. {esc(e["title"])} {_badge(verdict)}</h3>',
             "<dl>",
             f"<dt>Claim</dt><dd>{esc(e['claim'])}</dd>",
             f"<dt>Source</dt><dd>{esc(e['source'])}</dd>",
             f"<dt>Prediction</dt><dd>{esc(e['prediction'])}</dd>",
             f"<dt>Method</dt><dd>{esc(e['method'])}</dd>",
             f"<dt>Groups</dt><dd>{esc(', '.join(e['groups']))}</dd>"]
    if out:
        ci = out["ci"]
        parts += [f"<dt>Measurement</dt><dd>{esc(out['statistic'])} = <b>{esc(_fmt(ci['estimate']))}</b>, "
                  f"95% CI [{esc(_fmt(ci['low']))}, {esc(_fmt(ci['high']))}] (n = {esc(ci['n'])}, {esc(ci['method'])})</dd>",
                  f"<dt>Verdict</dt><dd>{_badge(verdict)} — rule: {esc(out['rule'])}</dd>"]
    parts.append(f"<dt>Duration</dt><dd>{esc(rec.get('duration_s', '?'))} s</dd></dl>")
    if out:
        parts.append(_figure(run_dir, out.get("figure"), e["title"]))
        rows = [f"<tr><td>{esc(g)}</td><td>{esc(_fmt([float(v) for v in vals]))}</td></tr>"
                for g, vals in out.get("groups", {}).items()]
        rows += [f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in out.get("numbers", {}).items()]
        if rows:
            parts.append('<table class="num"><tr><th>quantity</th><th>value (per seed / summary)</th></tr>'
                         + "".join(rows) + "</table>")
    else:
        parts.append(f"<p>The experiment failed:</p><pre>{esc(rec.get('error', 'unknown error'))}</pre>")
    parts.append("</section>")
    return "\n".join(parts)


def render(run_dir: str | Path, results: dict) -> str:
    run_dir = Path(run_dir)
    meta, recs = results["meta"], results["experiments"]
    suite, env = meta.get("suite", {}), meta.get("environment", {})
    counts: dict[str, int] = {}
    rows = []
    for rec in recs:
        e, out = rec["experiment"], rec.get("outcome")
        v = out["verdict"] if out else "error"
        counts[v] = counts.get(v, 0) + 1
        stat = (f"{esc(out['statistic'])} = {esc(_fmt(out['ci']['estimate']))} "
                f"[{esc(_fmt(out['ci']['low']))}, {esc(_fmt(out['ci']['high']))}]") if out else "—"
        rows.append(f'<tr><td>{esc(e["number"])}</td><td><a href="#{esc(e["id"])}">{esc(e["title"])}</a></td>'
                    f"<td>{esc(e['source'].split(';')[0])}</td><td>{stat}</td><td>{_badge(v)}</td></tr>")
    summary = ", ".join(f"{n} {esc(k)}" for k, n in sorted(counts.items()))
    meta_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>" for k, v in
                        [("suite", suite.get("name")), ("seeds", suite.get("seeds")), ("corpus", suite.get("corpus")),
                         ("device", suite.get("device")), ("started", meta.get("started")),
                         ("finished", meta.get("finished")), ("duration (s)", meta.get("duration_s"))]
                        + sorted(env.items()))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>mathlens validate — {esc(suite.get('name', ''))}</title><style>{CSS}</style></head>
<body><main>
<h1>mathlens validate</h1>
<p class="sub">Every claim put to a controlled, multi-seed test. Suite <b>{esc(suite.get('name', ''))}</b>,
seeds {esc(_fmt(suite.get('seeds')))}; {len(recs)} claims: {summary}.</p>
<h2>Claims</h2>
<table id="claims"><tr><th>#</th><th>claim</th><th>source</th><th>measurement (95% CI)</th><th>verdict</th></tr>
{''.join(rows)}</table>
<h2>Details</h2>
{''.join(_claim_section(run_dir, r) for r in recs)}
<h2>Run</h2>
<table>{meta_rows}</table>
</main></body></html>
"""


def write_report(run_dir: str | Path) -> Path:
    """(Re)build ``results.json`` and ``report.html`` from meta.json, the experiment records and the figures;
    returns the report's path. Every input is read and checked, and the page rendered, before anything is written
    (a bad input raises :class:`MathlensError` and changes nothing); both files are written atomically."""
    from mathlens.experiments.runner import load_results

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    page = render(run_dir, results)
    write_json(run_dir / "results.json", results)
    path = run_dir / "report.html"
    write_text(path, page)
    return path
