"""analysis.plots: every figure kind renders to a PNG file without a display; a claim's forest plot draws its
evidence."""
import numpy as np
import pandas as pd
import pytest

from analysis import claims, plots

PNG = b"\x89PNG"


def test_figures_are_written(tmp_path):
    paths = [plots.heatmap(np.eye(3), ["a", "b", "c"], ["x", "y", "z"], tmp_path / "h.png", "title")]
    along = pd.DataFrame({"t": [0, 0.5, 1] * 2, "loss": [1, 3, 1, 1, 1.2, 1], "path": ["segment"] * 3 + ["bezier"] * 3})
    paths.append(plots.lines(along, "t", "loss", tmp_path / "l.png", by=["path"]))
    variants = pd.DataFrame({"variant": ["original", "low", "high"], "accuracy": [0.9, 0.5, 0.2]})
    paths.append(plots.lines(variants, "variant", "accuracy", tmp_path / "sub" / "v.png", logy=True))
    xs, ys = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    grid = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "loss": (xs**2 + ys**2).ravel()})
    points = pd.DataFrame({"x": [0.0, 0.5], "y": [0.0, 0.2], "label": ["w70", "w150"]})
    paths.append(plots.plane_contour(grid, "loss", points, tmp_path / "p.png"))
    for p in paths:
        assert p.read_bytes()[:4] == PNG


@pytest.fixture
def drawn(monkeypatch):
    """The axes of each figure drawn (the PNG still written)."""
    axes, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (axes.append(fig.axes[0]), save(fig, path))[1])
    return axes


def test_forest_plot_of_a_claim_a_rate_claim_and_nan(tmp_path, drawn):
    """Seeds (points, NaN left out), interval (bar) and the rule's thresholds (vertical lines) of a claim; each
    setting's rate with its exact interval for a rate claim; one seed or a missing column: no bar, still a PNG."""
    f = pd.DataFrame({"a": [0.9, 0.8, np.nan, 0.86], "b": [0.88, 0.8, 0.7, 0.85], "u": [1, 0, np.nan, 0],
                      "v": [1, 1, 1, 0]}, index=pd.Index(range(4), name="seed"))
    within = claims.Claim("t", "w", "", "a minus b", ("a", "b"), claims.within(0.02))
    rate = claims.RateClaim("t", "r", "", "unstable rate", ("u", "v"))
    one = claims.Claim("t", "one", "", "a", ("a",), claims.above(0.5))
    gone = claims.Claim("t", "gone", "", "", ("a", "zzz"), claims.above(0.0))
    evs = [claims.evidence(c, f if c is not one else f.iloc[:1]) for c in (within, rate, one, gone)]
    paths = [plots.forest(ev, tmp_path / f"claim_{i}.png", "title", "statistic") for i, ev in enumerate(evs)]
    assert all(p.read_bytes()[:4] == PNG for p in paths)
    w, r, o, g = drawn
    g0 = evs[0].groups[0]
    lines = [tuple(line.get_xdata()) for line in w.get_lines()]
    assert (g0["lo"], g0["hi"]) in lines and (-0.02, -0.02) in lines and (0.02, 0.02) in lines
    assert np.allclose(sorted(w.collections[0].get_offsets()[:, 0]), [0.0, 0.01, 0.02])  # 3 finite seeds
    assert [t.get_text() for t in r.get_yticklabels()] == ["u (n = 3)", "v (n = 4)"]
    assert [tuple(line.get_xdata()) for line in r.get_lines()] == [(g["lo"], g["hi"]) for g in evs[1].groups]
    assert evs[1].groups[0]["mean"] == pytest.approx(1 / 3) and evs[1].lines == ()
    assert [tuple(line.get_xdata()) for line in o.get_lines()] == [(0.5, 0.5)]  # one seed: no interval
    assert [tuple(line.get_xdata()) for line in g.get_lines()] == [(0, 0)] and "not in this sweep: zzz" in g.get_title()
