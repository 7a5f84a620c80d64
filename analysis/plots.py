"""Figures for the analyses, drawn with matplotlib's Agg backend (imported only when drawing)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from harness.storage import atomic_write

    fig.tight_layout()
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:] or "png", dpi=120))
    _pyplot().close(fig)
    return path


def heatmap(matrix, rows: Sequence[str], cols: Sequence[str], path: str | Path, title: str = "",
            xlabel: str = "", ylabel: str = "", vmin: float = 0.0, vmax: float = 1.0, marks=None) -> Path:
    """Layer x layer similarity heatmap (rows = first checkpoint's layers); cells where the boolean
    matrix `marks` is true get a white x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.35 * len(cols)), max(4.0, 2.0 + 0.35 * len(rows))))
    im = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis", origin="lower")
    if marks is not None:
        i, j = np.nonzero(np.asarray(marks, dtype=bool))
        ax.scatter(j, i, marker="x", c="white", s=30, linewidths=1)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def similarity_heatmap(rows: pd.DataFrame, path: str | Path, title: str = "", xlabel: str = "",
                       ylabel: str = "") -> Path:
    """`heatmap` of layer x layer rows (index_a, index_b, layer_a, layer_b, similarity), as `cca_rows` returns;
    the axes read "layer of <xlabel>" (the second checkpoint) and "layer of <ylabel>" (the first).
    Rows of `layer_similarity` (with n and the permutation null) show the similarity above the null
    (similarity - null_mean), cells not above every permutation (null_max) marked x, and n in the title."""
    def grid(column: str) -> np.ndarray:
        return rows.pivot_table(index="index_a", columns="index_b", values=column, dropna=False).values

    xlabel, ylabel = f"layer of {xlabel or 'the second checkpoint'}", f"layer of {ylabel or 'the first checkpoint'}"
    la = rows.drop_duplicates("index_a").sort_values("index_a").layer_a.tolist()
    lb = rows.drop_duplicates("index_b").sort_values("index_b").layer_b.tolist()
    if "null_max" not in rows:
        return heatmap(grid("similarity"), la, lb, path, title, xlabel, ylabel)
    title += f"\nsimilarity - permutation null; n = {', '.join(map(str, sorted(set(rows.n))))}; x: not above null"
    return heatmap(grid("similarity") - grid("null_mean"), la, lb, path, title, xlabel, ylabel,
                   marks=~(grid("similarity") > grid("null_max")))


def diagonal_lines(rows: pd.DataFrame, path: str | Path, by: Sequence[str] = (), title: str = "",
                   over: str | None = None) -> Path:
    """`lines` of the per-layer similarity (layer_a vs layer_a rows of `layer_similarity`) next to its
    permutation null (null_mean), one pair of lines per combination of the `by` columns (mean and band over
    the `over` column, e.g. seed, where it varies)."""
    keep = [*by] + ([over] if over else [])
    long = rows.melt(id_vars=["layer_a", *keep], value_vars=["similarity", "null_mean"], var_name="curve")
    return lines(long, "layer_a", "value", path, by=[*by, "curve"], title=title, over=over)


def lines(df: pd.DataFrame, x: str, y: str, path: str | Path, by: Sequence[str] = (), title: str = "",
          logy: bool = False, over: str | None = None) -> Path:
    """One line per combination of the `by` columns: per-layer diagonals, curve vs segment along t,
    metric vs epoch, accuracy per frequency variant (categorical x is plotted in row order). With `over`
    (e.g. "seed"), a combination holding several values of that column is drawn as the mean over them at each
    x with a band: the 95% t interval of the mean (analysis.claims.interval), where at least 2 are finite,
    clipped to [0, 1] for an accuracy."""
    from analysis.claims import interval

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, (key, part) in enumerate(df.groupby(list(by), sort=False) if by else [((), df)]):
        label = ", ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        if over is not None and part[over].nunique() > 1:
            stats = pd.DataFrame([{x: v, **interval(g[y])} for v, g in part.groupby(x, sort=False)])
            label = f"{label} (mean of {part[over].nunique()} {over}s)".strip()
            part = stats.rename(columns={"mean": y})
        xs = part[x].astype(str) if part[x].dtype == object else part[x]
        line, = ax.plot(xs, part[y], marker=".", label=label or None,
                        linestyle=("-", "--", ":", "-.")[n // 10 % 4])  # colours repeat after 10; styles differ
        if "lo" in part:  # an accuracy's band kept inside [0, 1]: the t interval of 3 seeds can leave it
            lo, hi = (part[c].clip(0, 1) if y.endswith("accuracy") else part[c] for c in ("lo", "hi"))
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(xlabel=x, ylabel=y)
    if not pd.api.types.is_numeric_dtype(df[x]):  # layer names, variants
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.set_title(title, fontsize=9)
    if logy:
        ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:  # a line with a label (one unlabelled line needs no legend)
        ax.legend(fontsize=7, title=", ".join(by), title_fontsize=7)
    return _save(fig, path)


def plane_contour(grid: pd.DataFrame, value: str, points: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Log-spaced contours of a positive `value` over grid rows (x, y, value), with labelled projected
    checkpoints (x, y, label); off-plane losses span decades, so a linear scale would hide the basins."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    table = grid.pivot_table(index="y", columns="x", values=value)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    levels = np.geomspace(table.values.min(), table.values.max(), 21)
    cs = ax.contourf(table.columns, table.index, table.values, levels=levels, norm=LogNorm(), cmap="viridis_r")
    fig.colorbar(cs, ax=ax, label=value, format="%.3g")
    ax.scatter(points["x"], points["y"], c="white", edgecolors="black", zorder=3)
    for _, p in points.iterrows():
        ax.annotate(str(p["label"]), (p["x"], p["y"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="x (weight-space units)", ylabel="y (weight-space units)")
    ax.set_title(title, fontsize=8)
    return _save(fig, path)


def forest(evidence, path: str | Path, title: str = "", xlabel: str = "") -> Path:
    """A claim's forest plot (analysis.claims.evidence): per group one row, each seed's value (points), the
    mean or rate (diamond) and its 95% interval (bar); the rule's thresholds as vertical lines."""
    plt = _pyplot()
    groups = evidence.groups
    fig, ax = plt.subplots(figsize=(4.8, 1.3 + 0.45 * len(groups)))
    for y, g in enumerate(groups):
        x = g["values"][np.isfinite(g["values"])]
        ax.scatter(x, y + np.linspace(-0.15, 0.15, len(x)), s=12, color="0.45", zorder=2)
        if np.isfinite(g["lo"]):
            ax.plot([g["lo"], g["hi"]], [y, y], color="C0", linewidth=3, solid_capstyle="butt", zorder=3)
        ax.scatter([g["mean"]], [y], marker="D", s=30, color="C0", zorder=4)
    for m in evidence.lines:
        ax.axvline(m, color="C3", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(groups)), [f"{g['label']} (n = {g['n']})" for g in groups], fontsize=7)
    ax.set_ylim(len(groups) - 0.4, -0.6)  # the first group on top
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(textwrap.fill(xlabel, 60), fontsize=7)
    ax.set_title(title + (f"\nnot in this sweep: {', '.join(evidence.missing)}" if evidence.missing else ""),
                 fontsize=8)
    return _save(fig, path)
