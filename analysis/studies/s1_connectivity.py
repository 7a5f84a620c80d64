"""S1 (closer look, sec. 2.1.1): is mode G connected to each variant X by a low-loss polychain?"""
from __future__ import annotations

import pandas as pd

from analysis.claims import ACCURACY, Claim, below
from analysis.report import Report, accuracy_curves, connect, over_seeds
from analysis.study import Study
from harness.errors import ConfigError
from harness.registry import register

VARIANTS = {"A": "batch 4000", "B": "Adam", "C": "linear LR decay", "D": "weight decay 5e-6",
            "E": "init variance x3", "F": "no augmentation"}
CLAIMS = [Claim("s1", f"connected_G-{m}", f"In a few epochs of curve training, a polychain from G to mode {m} "
                f"({what}) is found along which every point generalizes almost as well as the two ends (sec. "
                "2.1.1, Fig. 1). Margin: 2 points of test error.",
                f"test error barrier on the G-{m} curve at the last curve epoch (max along t above the worse end)",
                (f"G-{m}",), below(0.02), bounds=ACCURACY) for m, what in VARIANTS.items()]


@register.study("s1")
class Connectivity(Study):
    """S1 (closer look, sec. 2.1.1): is mode G connected to each variant X by a low-loss polychain?"""

    claims = CLAIMS
    sizes = {"curve_epochs": (1, 2), "images": 100, "t_points": 5}
    columns = ("tags.mode",)

    def analyze(self, r: Report, *, curve_epochs: tuple[int, ...], images: int, t_points: int) -> pd.DataFrame:
        """Final accuracy per mode over seeds; polychain curve vs segment from G's final checkpoint to each other
        mode's of the same seed (labels G-X, G-X_seed<s> beyond the lowest seed); returns the per-seed frame of the claims."""
        acc = accuracy_curves(r, "tags.mode")
        stats = over_seeds(r, acc, "tags.mode", "accuracy_by_mode")
        r.say("## Final test accuracy per mode (mean over seeds, 95% t interval)", "",
              stats.to_markdown(index=False, floatfmt=".4f"), "")
        first = r.points.seed.min()
        pairs, which = [], {}
        for seed, points in r.points.groupby("seed"):
            final = {p["tags.mode"]: r.final_ckpt(p.trial_id) for _, p in points.iterrows()}
            if final.get("G") is None:
                raise ConfigError(f"{r.dir}: mode G (seed {seed}) has no final checkpoint")
            r.say(*[f"- G -> {m} (seed {seed}): skipped ({m} has no final checkpoint)" for m, c in final.items()
                    if c is None])
            for m, c in final.items():
                if m != "G" and c is not None:
                    label = f"G-{m}" + ("" if seed == first else f"_seed{seed}")
                    pairs.append((label, final["G"], c))
                    which[label] = (f"G-{m}", seed)
        _, _, bars = connect(r, pairs, curve_epochs, images, t_points)
        last = bars[(bars.path == "polychain") & (bars.curve_epoch == max(curve_epochs)) & (bars.split == "test")]
        frame = pd.DataFrame([{"seed": which[b.pair][1], "pair": which[b.pair][0], "error_barrier": b.error_barrier}
                              for b in last.itertuples()])
        return (frame.pivot_table(index="seed", columns="pair", values="error_barrier") if len(frame)
                else pd.DataFrame())
