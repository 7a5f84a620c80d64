"""The report as one self-contained HTML page (report.html next to report.md): its markdown sections with the
claims first, figures inline as base64 PNG, and every table sortable by a click on its header."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Sequence

import markdown
import pandas as pd

from analysis import claims as claims_lib
from analysis.results import atomic_write

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em; color: #222; }
nav { font-size: 13px; margin-bottom: 1em; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 12px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { white-space: nowrap; } td { max-width: 26em; white-space: normal; overflow-wrap: break-word; }
th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #fafafa; }
td.held { background: #d9f2d9 !important; } td.not-held { background: #f8d7d7 !important; }
td.inconclusive, td.not-judged { background: #eee !important; }
code { background: #f3f3f3; padding: 0 3px; }
figure { display: inline-block; margin: 0 1em 1.5em 0; vertical-align: top; }
img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 12px; color: #555; }
"""

# Click a header to sort its table (numbers by their first number, e.g. "0.91 [0.90, 0.92]", else as text);
# verdict cells (held / not held / inconclusive) get a colour.
SCRIPT = """
function key(td) { const m = td.textContent.match(/^\\s*(-?[\\d.]+(?:e-?\\d+)?)/); return m ? +m[1] : td.textContent; }
document.querySelectorAll("table").forEach(table => {
  table.querySelectorAll("th").forEach((th, col) => th.addEventListener("click", () => {
    const desc = th.classList.contains("asc");
    table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
    th.classList.add(desc ? "desc" : "asc");
    const body = table.tBodies[0], rows = Array.from(body.rows);
    rows.sort((a, b) => { const x = key(a.cells[col]), y = key(b.cells[col]);
      const c = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return desc ? -c : c; });
    rows.forEach(r => body.appendChild(r));
  }));
  table.querySelectorAll("td").forEach(td => {
    const v = td.textContent.trim();
    if (["held", "not held", "inconclusive", "not judged"].includes(v)) td.classList.add(v.replace(" ", "-"));
  });
});
"""


def sections(text: str) -> list[tuple[str, str]]:
    """Markdown split at its `## ` headings: (heading, markdown) pairs; the part before the first has heading ''."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line[3:].strip(), []))
        out[-1][1].append(line)
    return [(h, "\n".join(lines)) for h, lines in out]


def page(title: str, text: str, figures: Sequence[Path] = (), claims: pd.DataFrame | None = None) -> str:
    """The HTML page: `text` (markdown) with its `## Claims` section first (else the `claims` table, if given),
    then the figures, each PNG inline: where the markdown shows it (an image of the same file name), else under
    its file name in the figures section."""
    parts = sections(text)
    first = [p for p in parts if p[0] == "Claims"]
    rest = [p for p in parts if p[0] != "Claims"]
    if not first and claims is not None:
        first = [("Claims", "## Claims\n\n" + claims_lib.markdown(claims))]
    ordered = rest[:1] + first + rest[1:]
    found = {Path(f).name: Path(f) for f in figures if Path(f).is_file()}
    shown: set[str] = set()

    def inline(m: re.Match) -> str:
        name = Path(m.group(2)).name
        if name not in found:
            return m.group(0)
        shown.add(name)
        return m.group(1) + _data(found[name]) + '"'

    body = [re.sub(r'(<img [^>]*src=")([^"]*)"', inline, markdown.markdown(md, extensions=["tables"]))
            for _, md in ordered]
    figures = [f for f in figures if Path(f).name not in shown]
    heads = [h for h, _ in ordered if h] + (["Figures"] if figures else [])
    nav = " ".join(f'<a href="#{_anchor(h)}">{html.escape(h)}</a>' for h in heads)
    body = [b.replace("<h2>", f'<h2 id="{_anchor(h)}">', 1) for (h, _), b in zip(ordered, body)]
    if figures:
        body.append(f'<h2 id="{_anchor("Figures")}">Figures</h2>')
        body += [_figure(Path(f)) for f in figures]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head>\n<body>\n<nav>{nav}</nav>\n'
            + "\n".join(body) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def write(path: Path, title: str, text: str, figures: Sequence[Path] = (), claims: Path | None = None) -> Path:
    """Write `page` to `path` atomically; `claims` is the claims table's Parquet file, used if it exists."""
    table = pd.read_parquet(claims) if claims is not None and claims.is_file() else None
    page_text = page(title, text, figures, table)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page_text))


def _anchor(heading: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in heading.lower())


def _figure(path: Path) -> str:
    name = html.escape(path.name)
    if not path.is_file():
        return f"<p>missing figure: <code>{name}</code></p>"
    return (f'<figure id="fig-{_anchor(path.stem)}"><img src="{_data(path)}" alt="{name}">'
            f"<figcaption>{name}</figcaption></figure>")


def _data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
