"""analysis/html.py: a report page from synthetic markdown, figures and claims, checked by its structure and in
headless Chromium (every image decoded, no console error, tables sort); a report page of S3's claims with each
claim's forest plot once, under the table, and at 1280 px every verdict in view. Without chromium the browser tests
skip, unless CI is set: then they fail."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import html, report
from analysis.report import Report
from analysis.studies.s3_warmup import CLAIMS as S3
from harness.layout import RunDir
from harness.storage import write_parquet

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
  const out = (() => { MEASURE })();
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""
SORTS = """const table = () => document.querySelectorAll("table")[1], th = table().querySelectorAll("th")[1];
  th.click(); const asc = Array.from(table().tBodies[0].rows, r => r.cells[1].textContent);
  th.click(); const desc = Array.from(table().tBodies[0].rows, r => r.cells[1].textContent);
  return {imgs: Array.from(document.images, i => [i.complete, i.naturalWidth]), errors: __errors, asc, desc,
          held: document.querySelectorAll("td.held").length};"""
# the claims table's verdict cells' right edges (px), the right edge of its rightmost cell, how far it scrolls
# sideways and the page's scroll width
VERDICTS = """const table = document.querySelector("h2#claims ~ table"), right = c => c.getBoundingClientRect().right;
  const col = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent.trim() === "verdict");
  return {col, width: innerWidth, rights: Array.from(table.tBodies[0].rows, r => right(r.cells[col])),
          table_right: Math.max(...Array.from(table.querySelectorAll("td, th"), right)),
          table_scroll: table.scrollWidth - table.clientWidth, page_scroll_width: document.documentElement.scrollWidth,
          errors: __errors};"""


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        why = "no chromium (Debian package `chromium`)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    return exe


def probe(page: str, measure: str, tmp_path: Path, *flags: str) -> tuple[dict, str]:
    """`page` in headless Chromium, errors caught before its script; `measure` (the body of a JS function, run
    after load) returns an object, returned here with Chromium's stderr."""
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE_HEAD, 1)
                      .replace("</body>", PROBE_TAIL.replace("MEASURE", measure) + "</body>", 1))
    run = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=5000", *flags, "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout)
    assert found, run.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")), run.stderr


def test_page_in_headless_chromium(figures, tmp_path):
    probed, stderr = probe(html.page("toy", text(True), figures), SORTS, tmp_path)
    assert probed["imgs"] == [[True, 300], [True, 420]]  # every figure decoded, at its pixel width
    assert probed["errors"] == []
    assert [line for line in stderr.splitlines() if "CONSOLE" in line] == []  # the page logs nothing
    assert probed["asc"] == ["0.1", "0.9123", "0.95"] and probed["desc"] == ["0.95", "0.9123", "0.1"]
    assert probed["held"] == 1


@pytest.fixture
def report_page(tmp_path) -> RunDir:
    """report.html of a fabricated sweep (no training) through report.claims and Report.finish: S3's claims on 8
    seeds of made-up accuracies and instability outcomes (their notes long: exact intervals, p, seeds needed),
    the SVCCA columns absent (a "nothing in this sweep gives" note), and one more figure."""
    run = RunDir(tmp_path / "toy")
    run.figures.mkdir(parents=True)
    run.sweep_yaml.write_text(yaml.safe_dump({"name": "toy", "base": {"seed": 0},
                                              "points": [{"index": 0, "trial_id": "t0", "values": {}}]}))
    write_parquet(run.metrics_part("t0", 0), [{"trial_id": "t0", "iteration": 0}])
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({k: rng.uniform(0.85, 0.95, 8) for k in ("sb", "lb", "lb_warmup", "lb_freeze")},
                         index=pd.Index(range(8), name="seed"))
    frame = frame.join(pd.DataFrame({"unstable_" + k: v for k, v in
                                     {"lb": [1, 1, 0, 1, 0, 1, 1, 0], "lb_warmup": [0, 0, 0, 1, 0, 0, 0, np.nan],
                                      "lb_freeze": [0, 1, 0, 1, 0, 0, 1, 0]}.items()}))
    r = Report(run.path)
    draw(r.figure("test_accuracy"), 300)
    report.claims(r, S3, frame)
    r.finish()
    return run


def test_report_page_shows_each_claims_forest_plot_once_under_its_table(report_page):
    page = report_page.report_html.read_text()
    p = Parsed(page)
    assert p.h2 == ["claims", "figures"]
    claims_part = page[page.index('id="claims"'):page.index('id="figures"')]
    assert claims_part.index("</table>") < claims_part.index("<img")
    shown = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in p.imgs]
    assert shown == [report_page.figure(f"claim_{c.id}").read_bytes() for c in S3] + \
        [report_page.figure("test_accuracy").read_bytes()]  # claims' plots once, under the table; the rest after
    md = report_page.report_md.read_text()
    assert all(f"![claim_{c.id}](figures/claim_{c.id}.png)" in md for c in S3)


def test_the_claims_verdicts_are_in_view_at_1280_px(report_page, tmp_path):
    """At a 1280 x 800 window the claims table wraps its long cells (statistic, method, note) instead of scrolling
    sideways: every verdict cell, and every other, ends inside the window."""
    probed, _ = probe(report_page.report_html.read_text(), VERDICTS, tmp_path, "--window-size=1280,800")
    assert probed["width"] == 1280 and len(probed["rights"]) == len(S3) and probed["errors"] == []
    assert max(probed["rights"]) <= 1280 and probed["table_right"] <= 1280 and probed["table_scroll"] == 0, probed
    assert probed["page_scroll_width"] <= 1280, probed
