"""analysis.plots: every figure kind renders to a PNG file without a display."""
import numpy as np
import pandas as pd

from analysis import plots

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
