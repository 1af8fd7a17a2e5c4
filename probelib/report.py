"""What the notebooks save and print, and the results report built from it.

The notebooks call :func:`save_table`, :func:`save_figure` and :func:`verdict`; the runner then
writes ``<out>/index.md`` and ``<out>/index.html`` from the executed notebooks (:func:`write_report`).

Both files come from one Jinja2 template (:data:`REPORT_TEMPLATE`), rendered once per format. The
report opens with the claim table: one row per structured verdict (:class:`Verdict`) that an
executed notebook printed — the claim, the paper's direction, this run's result and the p-value
("—" where the test gives none). A structured verdict travels in the executed notebook as a
display output of type :data:`VERDICT_MIME` beside its ``VERDICT: ...`` text line.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probelib._util import check_name
from probelib.store import atomic_write, write_text_atomic

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from probelib.runner import NotebookResult

__all__ = ["save_table", "save_figure", "verdict", "VERDICT_PREFIX", "VERDICT_MIME", "RESULTS", "Verdict",
           "collect_verdicts", "collect_claims", "claim_rows", "REPORT_TEMPLATE", "render_report", "write_report"]

VERDICT_PREFIX = "VERDICT: "
#: The display-data type a structured verdict is written as (invisible in notebook front-ends).
VERDICT_MIME = "application/vnd.probelib.verdict+json"
#: The results a structured verdict may have.
RESULTS = ("YES", "NO", "NOT SIGNIFICANT")
_MANIFEST = "suite.json"


class Verdict(str):
    """A verdict line (a ``str``: printing and comparing it work as before) with its claim's structure.

    ``claim``: what is tested, with its setting (``"TRADES > natural NCG (pixel, mnist5kwo9)"``);
    ``paper``: the paper's direction for that claim (``"YES"``, or a short phrase);
    ``result``: this run's answer, one of :data:`RESULTS`; ``p``: the test's p-value, None when the
    verdict has none (never estimated).
    """

    claim: str
    paper: str
    result: str
    p: float | None

    def __new__(cls, text: str, *, claim: str, paper: str, result: str, p: float | None = None) -> "Verdict":
        if result not in RESULTS:
            raise ValueError(f"verdict result {result!r} must be one of {', '.join(RESULTS)}")
        if not str(claim).strip() or not str(paper).strip():
            raise ValueError("a structured verdict needs a non-empty claim and paper direction")
        if p is not None:
            p = float(p)
            if not (math.isnan(p) or 0.0 <= p <= 1.0):
                raise ValueError(f"p-value {p!r} is not in [0, 1]")
            p = None if math.isnan(p) else p
        self = super().__new__(cls, text)
        self.claim, self.paper, self.result, self.p = str(claim), str(paper), result, p
        return self

    def record(self) -> dict[str, Any]:
        """The machine-readable form written into the notebook (and read back by :func:`collect_claims`)."""
        return {"claim": self.claim, "paper": self.paper, "result": self.result, "p": self.p, "text": str(self)}


# --------------------------------------------------------------------------- what the notebooks call

def _results_folder(results_dir: str | os.PathLike) -> Path:
    """A relative ``results_dir`` lies in the project (a kernel in notebooks/ writes to the project's results/)."""
    from probelib.paths import project_path

    return project_path(results_dir)


def save_table(df: pd.DataFrame, name: str, results_dir: str | os.PathLike, *,
               float_format: str = "%.4f") -> Path:
    """Save ``df`` as ``<results_dir>/tables/<name>.csv`` and ``.tex`` (atomically); return the CSV path."""
    check_name(name, "table name")
    folder = _results_folder(results_dir) / "tables"
    csv = folder / f"{name}.csv"
    with atomic_write(csv) as tmp:
        df.to_csv(tmp, float_format=float_format)
    with atomic_write(folder / f"{name}.tex") as tmp:
        tmp.write_text(df.to_latex(float_format=lambda v: float_format % v))
    _record_output(csv)
    return csv


def save_figure(fig, name: str, results_dir: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``<results_dir>/figures/<name>.png`` and ``.pdf`` (atomically)."""
    check_name(name, "figure name")
    folder = _results_folder(results_dir) / "figures"
    png = folder / f"{name}.png"
    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    with atomic_write(folder / f"{name}.pdf") as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight")
    _record_output(png)
    return png


#: The runner sets this in each notebook's kernel: the file that :func:`save_table` and
#: :func:`save_figure` append what they wrote to, so each notebook's outputs are known even when
#: notebooks run side by side (``run --jobs``).
OUTPUTS_LOG_ENV = "PROBELIB_OUTPUTS_LOG"


def _record_output(path: Path) -> None:
    log = os.environ.get(OUTPUTS_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{Path(path).resolve()}\n")


def recorded_outputs(log: str | os.PathLike, out: Path) -> tuple[list[str], list[str]]:
    """The table and figure names (stems) that a notebook's kernel recorded in ``log`` under ``out``."""
    try:
        lines = Path(log).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], []
    out = out.resolve()
    rel = [Path(line).relative_to(out).as_posix() for line in lines
           if line and Path(line).is_relative_to(out) and Path(line).is_file()]  # a torn last line is dropped
    return _stems(rel, "tables"), _stems(rel, "figures")


def verdict(text: str, *, claim: str | None = None, paper: str | None = None, result: str | None = None,
            p: float | None = None) -> str:
    """Print one verdict line (collected into the results report) and return it.

    With ``claim``, ``paper`` and ``result`` (or when ``text`` is a :class:`~probelib.report.Verdict`
    carrying them), the verdict also enters the report's claim table: in a kernel it is displayed
    as :data:`~probelib.report.VERDICT_MIME` data (front-ends show nothing for it). ``p`` is the
    test's p-value, None when it has none. The printed line is the same either way.
    """
    if claim is not None or paper is not None or result is not None:
        if claim is None or paper is None or result is None:
            raise ValueError("a structured verdict needs claim, paper and result together")
        text = Verdict(str(text), claim=claim, paper=paper, result=result, p=p)
    elif p is not None:
        raise ValueError("p is given only with claim, paper and result")
    line = VERDICT_PREFIX + str(text)
    print(line, flush=True)
    if isinstance(text, Verdict):
        _display_claim(text)
    return line


def _display_claim(v: Verdict) -> None:
    """Send ``v``'s record as display data when running in an IPython kernel; else do nothing."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    from IPython.display import display

    display({VERDICT_MIME: v.record(), "text/plain": ""}, raw=True)


# --------------------------------------------------------------------------- reading executed notebooks

def _cells_outputs(notebook_path: str | os.PathLike) -> Iterable[dict[str, Any]]:
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    for cell in nb.cells:
        yield from cell.get("outputs", [])


def collect_verdicts(notebook_path: str | os.PathLike) -> list[str]:
    """The verdict lines (``VERDICT: ...``, prefix removed) printed in an executed notebook's streams."""
    lines = []
    for out in _cells_outputs(notebook_path):
        if out.get("output_type") == "stream":
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            lines += [ln[len(VERDICT_PREFIX):].strip() for ln in text.splitlines() if ln.startswith(VERDICT_PREFIX)]
    return lines


def collect_claims(notebook_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The structured verdicts (:meth:`Verdict.record`) in an executed notebook's display outputs, each once."""
    found: dict[str, dict[str, Any]] = {}
    for out in _cells_outputs(notebook_path):
        if out.get("output_type") in ("display_data", "execute_result") and VERDICT_MIME in out.get("data", {}):
            rec = out["data"][VERDICT_MIME]
            rec = json.loads(rec) if isinstance(rec, str) else dict(rec)
            if all(k in rec for k in ("claim", "paper", "result")):
                found.setdefault(json.dumps(rec, sort_keys=True), rec)
    return list(found.values())


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    p = float(p)
    return "< 1e-300" if p == 0 else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def claim_rows(claims: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, str]]:
    """The claim table's rows, in notebook order: claim, paper's direction, this run's result,
    p-value (``"—"`` when missing), the notebook(s), and whether the result agrees with the paper.

    A claim that several notebooks tested with the same result and p-value (e.g. NCG above chance,
    in notebooks 00 and 01) is one row naming both notebooks."""
    rows: dict[tuple[str, str, str, str], dict[str, str]] = {}
    for stem, recs in claims.items():
        for r in recs:
            row = {"claim": str(r["claim"]), "paper": str(r["paper"]), "result": str(r["result"]),
                   "p": _fmt_p(r.get("p")), "notebook": stem,
                   "agrees": "agrees" if str(r["result"]) == str(r["paper"]) else "differs"}
            key = (row["claim"], row["paper"], row["result"], row["p"])
            if key in rows:
                if stem not in rows[key]["notebook"].split(", "):
                    rows[key]["notebook"] += f", {stem}"
            else:
                rows[key] = row
    return list(rows.values())


def _load_manifest(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / _MANIFEST).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def _version() -> str:
    from probelib import __version__

    return __version__


def _snapshot(out: Path) -> dict[str, int]:
    """``{"tables/x.csv": mtime_ns, ...}`` of the files under ``out/tables`` and ``out/figures``."""
    snap = {}
    for sub in ("tables", "figures"):
        folder = out / sub
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and not p.name.startswith("."):
                    snap[f"{sub}/{p.name}"] = p.stat().st_mtime_ns
    return snap


def _stems(paths: Iterable[str], sub: str) -> list[str]:
    return sorted({Path(p).stem for p in paths if p.startswith(sub + "/")})


_FILE_TYPES = {"tables": (".csv", ".tex"), "figures": (".png", ".pdf")}

#: The one template of the report. ``fmt`` is ``"md"`` or ``"html"``; the macros below are the only
#: format-specific parts, so both files carry the same sections, rows and links.
REPORT_TEMPLATE = r"""
{%- macro esc(s) -%}{{ s | md if fmt == "md" else s | e }}{%- endmacro -%}
{%- macro link(href, label) -%}{% if fmt == "md" %}[{{ label | md }}]({{ href }}){% else %}<a href="{{ href | e }}">{{ label | e }}</a>{% endif %}{%- endmacro -%}
{%- macro h(level, text) -%}{% if fmt == "md" %}{{ "#" * level }} {{ text }}
{% else %}<h{{ level }}>{{ text | e }}</h{{ level }}>{% endif %}
{%- endmacro -%}
{%- macro para(text, cls="") -%}{% if fmt == "md" %}{{ text }}
{% else %}<p{% if cls %} class="{{ cls }}"{% endif %}>{{ text }}</p>{% endif %}
{%- endmacro -%}
{%- macro table(header, rows, classes={}) -%}
{% if fmt == "md" -%}
| {{ header | join(" | ") }} |
|{% for _ in header %}---|{% endfor %}
{% for row in rows %}| {{ row | join(" | ") }} |
{% endfor %}
{%- else -%}
<table><tr>{% for c in header %}<th>{{ c | e }}</th>{% endfor %}</tr>
{% for row in rows %}{% set ri = loop.index0 %}<tr>{% for cell in row %}<td{% if loop.index0 in classes %} class="{{ classes[loop.index0][ri] }}"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{%- endif %}
{%- endmacro -%}
{%- macro files(kind, name) -%}
{% for ext in file_types[kind] if (kind ~ "/" ~ name ~ ext) in existing %}{% if not loop.first %} · {% endif %}{{ link(kind ~ "/" ~ name ~ ext, ext[1:] | upper) }}{% endfor %}
{%- endmacro -%}
{% if fmt == "html" -%}
<!doctype html><html><head><meta charset="utf-8"><title>{{ title | e }}</title>
<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}img{max-width:100%}.failed{color:#b00;font-weight:bold}.ok{color:#070}.agrees{color:#070}.differs{color:#b00}details{margin:.3em 0}</style></head><body>
{% endif -%}
{{ h(1, title) }}
{% for line in head %}{{ para(esc(line) ~ ("  " if fmt == "md" else "")) }}{% endfor %}
{% for f in failed %}{{ para(("**FAILED: " ~ esc(f.stem) ~ "**" if fmt == "md" else "FAILED: " ~ esc(f.stem)) ~ " — " ~ esc(f.error) ~ "; " ~ ("its executed notebook keeps the traceback: " ~ link(f.output, f.output) if f.output else "no executed notebook was written"), "failed") }}
{% endfor -%}
{% if pending %}{{ para("Not run (after the failure): " ~ esc(pending | join(", "))) }}
{% endif -%}
{{ h(2, "Claims") }}
{% if claims -%}
{{ table(["claim", "paper", "this run", "p-value", "notebook"],
         claims | map("claim_cells", fmt) | list, {2: claims | map(attribute="agrees") | list}) }}
{{ para(esc("One row per claim a notebook of this run (or an earlier one into this folder) tested; the paper column is its direction, \"—\" marks a test that gives no p-value.")) }}
{%- else -%}
{{ para("(no claim was tested: none of the executed notebooks printed a structured verdict)") }}
{%- endif %}
{{ h(2, "Parameters") }}
{{ table(["parameter", "value"], params) }}
{{ h(2, "Notebooks") }}
{{ table(["notebook", "status", "time", "run", "parameters passed"], notebooks, {1: statuses}) }}
{{ h(2, "Verdicts") }}
{% for stem, lines in verdicts.items() if lines -%}
{% if fmt == "md" %}**{{ stem }}**

{% for v in lines %}- {{ v | md }}
{% endfor %}
{% else %}<h3>{{ stem | e }}</h3><ul>{% for v in lines %}<li>{{ v | e }}</li>{% endfor %}</ul>
{% endif %}
{%- else -%}
{{ para("(no verdict lines)") }}
{%- endfor %}
{{ h(2, "Tables") }}
{% if fmt == "md" -%}
{{ table(["table", "notebook", "files"], tables | map("table_cells") | list) if tables else table(["table", "notebook", "files"], [["(none)", "", ""]]) }}
{%- else -%}
{% for t in tables %}<details><summary><b>{{ t.name | e }}</b> ({{ t.owner | e }}) {{ files("tables", t.name) }}</summary>{{ t.html }}</details>
{% else %}<p>(none)</p>
{% endfor %}
{%- endif %}
{{ h(2, "Figures") }}
{% for f in figures -%}
{% if fmt == "md" %}### {{ f.name }} ({{ f.owner }})

{% if f.png %}![{{ f.name }}](figures/{{ f.name }}.png)

{% endif %}{{ files("figures", f.name) }}

{% else %}<h3>{{ f.name | e }} <small>({{ f.owner | e }}) {{ files("figures", f.name) }}</small></h3>
{% if f.png %}<img src="figures/{{ f.name | e }}.png" alt="{{ f.name | e }}">
{% endif %}{% endif %}
{%- else -%}
{{ para("(none)") }}
{%- endfor %}
{% if fmt == "html" %}</body></html>
{% endif %}"""


def _environment():
    import jinja2
    from markupsafe import escape

    env = jinja2.Environment(autoescape=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["md"] = _md_escape
    env.filters["e"] = lambda s: str(escape(str(s)))

    def claim_cells(r: Mapping[str, str], fmt: str) -> list[str]:
        esc = _md_escape if fmt == "md" else env.filters["e"]
        return [esc(r["claim"]), esc(r["paper"]), esc(r["result"]), esc(r["p"]), esc(r["notebook"])]

    env.filters["claim_cells"] = claim_cells
    return env


def render_report(context: Mapping[str, Any], fmt: str) -> str:
    """Render :data:`REPORT_TEMPLATE` as ``fmt`` (``"md"`` or ``"html"``) from ``context``.

    ``context`` holds already-escaped-per-format-free data: ``title``, ``head`` (lines), ``failed``,
    ``pending``, ``claims`` (:func:`claim_rows`), ``params``, ``notebooks``, ``verdicts``,
    ``tables``, ``figures``, ``existing`` (file paths under ``out``)."""
    if fmt not in ("md", "html"):
        raise ValueError(f"report format {fmt!r} must be 'md' or 'html'")
    env = _environment()
    esc = env.filters["md"] if fmt == "md" else env.filters["e"]
    code = (lambda s: f"`{_md_escape(s)}`") if fmt == "md" else (lambda s: f"<code>{esc(s)}</code>")

    def link(href: str | None, label: str) -> str:
        if not href:
            return esc(label)
        return f"[{_md_escape(label)}]({href})" if fmt == "md" else f'<a href="{esc(href)}">{esc(label)}</a>'

    env.filters["table_cells"] = lambda t: [esc(t["name"]), esc(t["owner"]), t["links_md"]]
    params = [[esc(k), code(repr(v))] for k, v in context["params"].items()]
    notebooks = [[link(n["output"], n["stem"]), esc(n["status"]), esc(n["time"]), esc(n["when"]), esc(n["ptxt"])]
                 for n in context["notebooks"]]
    tables = [{**t, "links_md": " · ".join(f"[{ext[1:].upper()}](tables/{t['name']}{ext})"
                                          for ext in _FILE_TYPES["tables"]
                                          if f"tables/{t['name']}{ext}" in context["existing"])}
              for t in context["tables"]]
    claims = context["claims"]
    template = env.from_string(REPORT_TEMPLATE)
    return template.render(
        fmt=fmt, title=context["title"], head=context["head"], failed=context["failed"],
        pending=context["pending"], claims=claims, params=params, notebooks=notebooks,
        verdicts=context["verdicts"], tables=tables, figures=context["figures"],
        existing=set(context["existing"]), file_types=_FILE_TYPES,
        statuses=[n["status"] for n in context["notebooks"]])


def write_report(out: str | os.PathLike, results: Sequence["NotebookResult"],
                 run_info: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``<out>/index.md`` and ``<out>/index.html`` (and the ``suite.json`` manifest they come from).

    Notebooks executed by earlier runs into the same folder stay listed (marked with their run
    time), so a partial re-run (``--only``) keeps a complete report. Each verdict line and each
    claim is listed once.
    """
    import pandas as pd

    out = Path(out)
    manifest = _load_manifest(out)
    entries: dict[str, dict[str, Any]] = manifest.get("notebooks", {})
    for r in results:
        if r.status == "not run":
            continue
        entries[r.notebook.stem] = {
            "number": r.notebook.number, "status": r.status, "run": run_info["started"],
            "elapsed_s": None if r.elapsed_s is None else round(r.elapsed_s, 1),
            "output": None if r.output is None else r.output.relative_to(out).as_posix(),
            "parameters": dict(r.parameters), "tables": r.tables, "figures": r.figures, "error": r.error}
    pending = [r.notebook.stem for r in results if r.status == "not run"]  # selected, not reached
    entries = dict(sorted(entries.items()))
    manifest = {"probelib_version": _version(), "python": platform.python_version(),
                "last_run": dict(run_info), "notebooks": entries}
    write_text_atomic(out / _MANIFEST, json.dumps(manifest, indent=1, default=str))

    existing = sorted(_snapshot(out))
    owner: dict[tuple[str, str], str] = {}
    for stem, e in entries.items():
        for kind in ("tables", "figures"):
            for name in e.get(kind, []):
                owner[(kind, name)] = stem
    verdicts: dict[str, list[str]] = {}
    claims: dict[str, list[dict[str, Any]]] = {}
    for stem, e in entries.items():
        if e.get("output") and (out / e["output"]).exists():
            try:
                verdicts[stem] = list(dict.fromkeys(collect_verdicts(out / e["output"])))  # each verdict once
                claims[stem] = collect_claims(out / e["output"])
            except Exception:  # an unreadable notebook is listed without verdicts
                verdicts[stem], claims[stem] = [], []

    this_run = {r.notebook.stem for r in results if r.status != "not run"}
    head = [f"probelib {_version()} · Python {platform.python_version()} · run started "
            f"{run_info['started']} · {_fmt_time(run_info['elapsed_s'])} (m:ss)"]
    if run_info.get("command"):
        head.append(f"Command: {run_info['command']}")
    params = {"dataset": run_info["dataset"] if run_info["dataset"] is not None else "(each notebook's default)",
              "smoke": run_info["smoke"], "fresh": run_info["fresh"], "results_dir": str(out),
              **{f"-p {k}": v for k, v in run_info["overrides"].items()}}
    failed = [{"stem": r.notebook.stem, "error": str(entries[r.notebook.stem]["error"]),
               "output": entries[r.notebook.stem].get("output")} for r in results if r.status == "failed"]
    notebooks = [{"stem": stem, "output": e.get("output"), "status": e["status"],
                  "time": "" if e.get("elapsed_s") is None else f"{e['elapsed_s']:.1f} s",
                  "when": "this run" if stem in this_run else e.get("run", ""),
                  "ptxt": ", ".join(f"{k}={v!r}" for k, v in e["parameters"].items() if k != "results_dir")}
                 for stem, e in entries.items()]
    tables = []
    for t in _stems(existing, "tables"):
        rendered = ""
        try:
            df = pd.read_csv(out / "tables" / f"{t}.csv", index_col=0)
            rendered = df.head(60).to_html(float_format=lambda v: f"{v:.4g}", border=0)
            if len(df) > 60:
                rendered += f"<p>… {len(df) - 60} more rows in the CSV</p>"
        except Exception:  # a table that pandas cannot read back is still linked
            pass
        tables.append({"name": t, "owner": owner.get(("tables", t), "earlier run"), "html": rendered})
    figures = [{"name": f, "owner": owner.get(("figures", f), "earlier run"),
                "png": f"figures/{f}.png" in existing} for f in _stems(existing, "figures")]
    context = {"title": f"probelib results — {out.name}", "head": head, "failed": failed, "pending": pending,
               "claims": claim_rows(claims), "params": params, "notebooks": notebooks, "verdicts": verdicts,
               "tables": tables, "figures": figures, "existing": existing}
    index_md = write_text_atomic(out / "index.md", render_report(context, "md"))
    index_html = write_text_atomic(out / "index.html", render_report(context, "html"))
    return index_md, index_html
