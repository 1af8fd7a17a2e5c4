"""The results report (probelib.report): the claim table from structured verdicts, one template for
md and html; and the runner's per-cell progress lines (probelib.execute.CellProgress)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from probelib import report as R
from probelib.execute import CellProgress
from probelib.report import verdict
from probelib.runner import Notebook, NotebookResult, run_suite

INFO = {"started": "2026-01-01T00:00:00+00:00", "elapsed_s": 3.0, "dataset": None, "smoke": True,
        "fresh": False, "overrides": {}}


def _claim_output(v: R.Verdict) -> nbformat.NotebookNode:
    return new_output("display_data", data={R.VERDICT_MIME: v.record(), "text/plain": ""})


def _executed(out: Path, stem: str, verdicts: list[R.Verdict | str]) -> NotebookResult:
    """An executed notebook as the runner leaves it: verdict lines in a stream, claims as display data."""
    text = "".join(f"{R.VERDICT_PREFIX}{v}\n" for v in verdicts)
    outputs = [new_output("stream", name="stdout", text=text)]
    outputs += [_claim_output(v) for v in verdicts if isinstance(v, R.Verdict)]
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    path = out / "notebooks" / f"{stem}.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("", outputs=outputs)]), path)
    number, name = stem.split("_", 1)
    return NotebookResult(Notebook(int(number), name, out / f"{stem}.ipynb"), "ok", output=path, elapsed_s=1.0)


def _claim_rows_md(md: str) -> list[list[str]]:
    section = md.split("## Claims", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in rows[1:]]


def _claim_rows_html(html: str) -> list[list[str]]:
    section = html.split("<h2>Claims</h2>", 1)[1].split("<h2>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", section) if "<td" in tr]


def test_claim_table_from_structured_verdicts(tmp_path):
    trades = R.Verdict("robust > natural NCG (pixel, TRADES(2), d): YES (0.61 vs 0.42; McNemar p=0.0031)",
                       claim="TRADES(2) > natural NCG (pixel, d)", paper="YES", result="YES", p=0.0031)
    border = R.Verdict("AdaBN hurts on the black border: NOT SIGNIFICANT", claim="AdaBN hurts on the black border",
                       paper="YES", result="NOT SIGNIFICANT", p=0.4)
    radius = R.Verdict("robust radius far below the OOD distance: YES", claim="radius | far below <D>",
                       paper="YES", result="NO")  # no p-value: shown as "—"
    results = [_executed(tmp_path, "01_pixel", [trades, "an unstructured line: YES", trades]),
               _executed(tmp_path, "32_border", [border, radius]),
               NotebookResult(Notebook(33, "ncg_adabn", tmp_path / "33_ncg_adabn.ipynb"), "not run")]
    index_md, index_html = R.write_report(tmp_path, results, INFO)
    md, html = index_md.read_text(), index_html.read_text()

    expected = [["TRADES(2) > natural NCG (pixel, d)", "YES", "YES", "0.003", "01_pixel"],
                ["AdaBN hurts on the black border", "YES", "NOT SIGNIFICANT", "0.400", "32_border"],
                ["radius \\| far below <D>", "YES", "NO", "—", "32_border"]]
    assert _claim_rows_md(md) == expected  # each claim once, in notebook order; the claim not run is absent
    assert _claim_rows_html(html) == [[c.replace("\\|", "|").replace("<", "&lt;").replace(">", "&gt;") for c in row]
                                      for row in expected]
    assert md.index("## Claims") < md.index("## Parameters") < md.index("## Verdicts")
    assert html.index("<h2>Claims</h2>") < html.index("<h2>Parameters</h2>")
    assert "33_ncg_adabn" not in md.split("## Parameters")[0].split("## Claims")[1]
    # the verdict lines are still listed, each once, structured or not
    assert md.count("an unstructured line: YES") == 1 and md.count("McNemar p=0.0031") == 1
    assert html.count("an unstructured line: YES") == 1
    assert 'class="differs">NO<' in html and 'class="agrees">YES<' in html


def test_one_template_renders_both_formats(tmp_path):
    results = [_executed(tmp_path, "01_x", [R.Verdict("A: YES", claim="A", paper="YES", result="YES", p=None)])]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.csv").write_text("i,a\n0,1\n")
    results[0].tables = ["t"]
    index_md, index_html = R.write_report(tmp_path, results, INFO)
    md, html = index_md.read_text(), index_html.read_text()
    sections = ["Claims", "Parameters", "Notebooks", "Verdicts", "Tables", "Figures"]
    assert re.findall(r"^## (\w+)", md, re.M) == sections
    assert re.findall(r"<h2>(\w+)</h2>", html) == sections
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "| A | YES | YES | — | 01_x |" in md and "[CSV](tables/t.csv)" in md
    assert '<a href="tables/t.csv">CSV</a>' in html and "[CSV]" not in html and "<td" not in md
    # nothing but render_report writes the two files: the same context gives the same text
    assert R.render_report.__module__ == "probelib.report" and R.REPORT_TEMPLATE.count("{% if fmt") > 3
    with pytest.raises(ValueError, match="'md' or 'html'"):
        R.render_report({}, "pdf")


def test_no_claims_and_no_invented_p(tmp_path):
    md_path, _ = R.write_report(tmp_path, [_executed(tmp_path, "01_x", ["plain: YES"])], INFO)
    md = md_path.read_text()
    assert "(no claim was tested" in md and "plain: YES" in md
    assert R.claim_rows({"01_x": [{"claim": "c", "paper": "YES", "result": "NO", "p": None}]})[0]["p"] == "—"
    assert R.claim_rows({"01_x": [{"claim": "c", "paper": "YES", "result": "NO", "p": float("nan")}]})[0]["p"] == "—"
    same = {"claim": "NCG above chance (pixel)", "paper": "YES", "result": "YES", "p": 1e-5}
    rows = R.claim_rows({"00_a": [same], "01_b": [same, {**same, "p": 0.2}]})  # one claim, two notebooks
    assert [(r["notebook"], r["p"]) for r in rows] == [("00_a, 01_b", "1e-05"), ("01_b", "0.200")]


def test_verdict_values_are_checked_and_the_line_unchanged(capsys):
    line = verdict("x > y (d): YES (p=0.01)", claim="x > y (d)", paper="YES", result="YES", p=0.01)
    assert line == "VERDICT: x > y (d): YES (p=0.01)" and capsys.readouterr().out == line + "\n"
    assert verdict("plain: NO") == "VERDICT: plain: NO"
    with pytest.raises(ValueError, match="YES, NO, NOT SIGNIFICANT"):
        R.Verdict("t", claim="c", paper="YES", result="yes")
    with pytest.raises(ValueError, match="together"):
        verdict("t", claim="c", result="YES")
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        R.Verdict("t", claim="c", paper="YES", result="NO", p=1.5)
    v = R.Verdict("t: NO", claim="c", paper="YES", result="NO", p=float("nan"))
    assert v == "t: NO" and v.record() == {"claim": "c", "paper": "YES", "result": "NO", "p": None, "text": "t: NO"}


def test_ncg_verdict_functions_carry_their_claim():
    import numpy as np
    import pandas as pd

    from probelib import ncg as N

    table = pd.DataFrame({"ncg": [0.4, 0.6], "mcnemar_p": [np.nan, 0.02]}, index=["natural", "TRADES(2)"])
    v = N.compare_verdict(table, "TRADES(2)", "feature", "d")
    assert (v.claim, v.paper, v.result, v.p) == ("TRADES(2) > natural NCG (feature, d)", "YES", "YES", 0.02)
    c = N.chance_verdict(np.zeros(90), np.r_[np.zeros(10), np.ones(80)], 9, "pixel, natural, d")
    assert (c.claim, c.result) == ("NCG above chance (pixel, natural, d)", "NO") and 0 <= c.p <= 1


def test_progress_lines_are_throttled():
    printed: list[str] = []
    p = CellProgress("[1/2] 00_x", printed.append, interval=3600)
    p.start(4)
    p.cell(1)
    p.output("step 1\n")
    p.cell(2)
    assert printed == ["[1/2] 00_x cell 1/4 (0:00)"]  # the first line at once, then at most one an hour
    q = CellProgress("[2/2] 01_y", printed.append, interval=0)
    q.start(2)
    q.cell(2)
    q.output("\x1b[32m 10%|#         | 1/10\r 40%|####      | 4/10\r")
    q.output("   \n")  # blank: ignored
    assert printed[1:] == ["[2/2] 01_y cell 2/2 (0:00)", "[2/2] 01_y cell 2/2 (0:00) 40%|####      | 4/10"]


@pytest.mark.slow
def test_run_prints_progress_inside_a_notebook(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = new_notebook(cells=[new_code_cell('smoke = False\nresults_dir = "r"', metadata={"tags": ["parameters"]}),
                             new_code_cell("import sys, time\nprint('loading the model')\nfor i in range(3):\n"
                                           "    print(f'batch {i + 1}/3', file=sys.stderr, flush=True)\n"
                                           "    time.sleep(0.2)\n"),
                             new_code_cell("from probelib.report import verdict\nprint('scored', 42)\n"
                                           "verdict('tiny: YES', claim='tiny claim', paper='YES', result='YES', p=0.5)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "01_tiny.ipynb")
    result = run_suite(notebooks_dir=folder, out=tmp_path / "res", smoke=True, progress_every=0)
    printed = capsys.readouterr().out.splitlines()
    assert result.ok, [r.error for r in result.results]
    progress = [ln for ln in printed if ln.startswith("[1/1] 01_tiny cell ")]
    # 4 code cells: the parameters cell, the two of the notebook and papermill's injected parameters
    assert {ln.split(" (")[0] for ln in progress} == {f"[1/1] 01_tiny cell {k}/4" for k in (1, 2, 3, 4)}
    assert any(ln.endswith("batch 3/3") for ln in progress) and any(ln.endswith("VERDICT: tiny: YES") for ln in progress)
    assert printed.index(progress[-1]) < printed.index(next(ln for ln in printed if "01_tiny ok in" in ln))
    # the structured verdict went through a real kernel into the claim table
    assert "| tiny claim | YES | YES | 0.500 | 01_tiny |" in result.index_md.read_text()


def test_adabn_verdicts_carry_their_claims():
    import pandas as pd

    from probelib.adabn import border_verdicts, label_shift_verdicts

    t = pd.DataFrame([dict(border=b, arm=a, accuracy=acc, momentum="None", gained=g, lost=l, p_value=p)
                      for b, a, acc, g, l, p in [("black", "source", 0.9, 0, 0, 1.0), ("black", "adabn", 0.8, 2, 22, 1e-4),
                                                 ("white", "source", 0.9, 0, 0, 1.0), ("white", "adabn", 0.91, 5, 4, 0.8)]])
    black, white = border_verdicts(t)
    assert (black.result, black.paper, black.p) == ("YES", "YES", 1e-4) and "black border" in black.claim
    assert white.result == "NOT SIGNIFICANT" and "not in the paper" in white.paper
    ls = pd.DataFrame([dict(k=k, m=0, exclude="last", gain=g, p_value=p, momentum="None", n_bn_layers=3)
                       for k, g, p in [(1, -0.5, 0.001), (5, 0.0, 1.0)]])
    (fewer,) = label_shift_verdicts(ls)
    assert (fewer.result, fewer.p) == ("YES", 0.001) and "fewer classes" in fewer.claim
