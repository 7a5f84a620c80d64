"""analysis/html.py: a report page from synthetic markdown, figures and claims, checked by its structure and in
headless Chromium (every image decoded, no console error, tables sort). Without chromium the browser test skips,
unless CI is set: then it fails."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from analysis import html

CLAIMS = pd.DataFrame({"claim": ["warmup-helps", "freeze-equal"], "mean": [0.031, -0.002],
                       "verdict": ["held", "inconclusive"]})
ACC = pd.DataFrame({"run": ["sb", "lb", "lb_warmup"], "final_accuracy": [0.9123, 0.1, 0.95]})


def text(with_claims: bool) -> str:
    claims = ["## Claims", "", CLAIMS.to_markdown(index=False), ""] if with_claims else []
    return "\n".join(["# Report: toy", "", "## Accuracy (test split)", "", ACC.to_markdown(index=False), "",
                      "- note with `code`", "", *claims])


def draw(path: Path, width: int) -> Path:
    """A PNG `width` pixels wide (dpi 100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width / 100, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Parsed(HTMLParser):
    """The page's h2 ids in order, img srcs and table count."""

    def __init__(self, page: str):
        super().__init__()
        self.h2, self.imgs, self.tables = [], [], 0
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2":
            self.h2.append(a.get("id"))
        elif tag == "img":
            self.imgs.append(a["src"])
        elif tag == "table":
            self.tables += 1


@pytest.fixture
def figures(tmp_path):
    return [draw(tmp_path / "test_accuracy.png", 300), draw(tmp_path / "cca_lb_iter0_vs_iter8.png", 420)]


def test_claims_section_first_figures_inline(figures):
    p = Parsed(html.page("toy", text(True), figures))
    assert p.h2 == ["claims", "accuracy--test-split-", "figures"]
    assert [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in p.imgs] == \
        [f.read_bytes() for f in figures]
    assert p.tables == 2


def test_claims_table_from_parquet_when_the_markdown_has_none(figures, tmp_path):
    CLAIMS.to_parquet(tmp_path / "claims.parquet")
    out = html.write(tmp_path / "report.html", "toy", text(False), figures, tmp_path / "claims.parquet")
    page = out.read_text()
    assert Parsed(page).h2[0] == "claims" and "warmup-helps" in page
    assert Parsed(html.page("toy", text(False))).h2 == ["accuracy--test-split-"]  # no claims, no figures


def test_missing_figure_named(tmp_path):
    assert "missing figure: <code>gone.png</code>" in html.page("toy", "# x", [tmp_path / "gone.png"])


PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", e => __errors.push(String(e.message || "not loaded: " + e.target.alt)), true);
const __ce = console.error; console.error = (...a) => { __errors.push(a.join(" ")); __ce(...a); };</script>"""
PROBE_TAIL = """<script>window.addEventListener("load", () => {
  const th = document.querySelectorAll("table")[1].querySelectorAll("th")[1];
  th.click(); const asc = Array.from(document.querySelectorAll("table")[1].tBodies[0].rows, r => r.cells[1].textContent);
  th.click(); const desc = Array.from(document.querySelectorAll("table")[1].tBodies[0].rows, r => r.cells[1].textContent);
  const out = {imgs: Array.from(document.images, i => [i.complete, i.naturalWidth]), errors: __errors, asc, desc,
               held: document.querySelectorAll("td.held").length};
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        why = "no chromium (Debian package `chromium`)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    return exe


def test_page_in_headless_chromium(figures, tmp_path):
    exe = chromium()
    page = html.page("toy", text(True), figures)
    probed = tmp_path / "probed.html"  # the page plus a probe: errors caught before its script, results after load
    probed.write_text(page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1))
    run = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout)
    assert found, run.stderr[-2000:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["imgs"] == [[True, 300], [True, 420]]  # every figure decoded, at its pixel width
    assert probe["errors"] == []
    assert [line for line in run.stderr.splitlines() if "CONSOLE" in line] == []  # the page logs nothing
    assert probe["asc"] == ["0.1", "0.9123", "0.95"] and probe["desc"] == ["0.95", "0.9123", "0.1"]
    assert probe["held"] == 1
