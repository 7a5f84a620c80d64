"""S1 (closer look, sec. 2.1.1): is mode G connected to each variant X by a low-loss polychain?"""
from __future__ import annotations

from analysis.report import Report, accuracy_curves, connect
from harness.errors import ConfigError


def report_connectivity(r: Report, curve_epochs: tuple[int, ...] = (1, 2), images: int = 100,
                        t_points: int = 5) -> None:
    """Final accuracy per mode; polychain curve vs segment from G's final checkpoint to each other mode's."""
    acc = accuracy_curves(r, "tags.mode")
    r.say("## Final test accuracy per mode", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
    final = {p["tags.mode"]: r.final_ckpt(p.trial_id) for _, p in r.points.iterrows()}
    if final.get("G") is None:
        raise ConfigError(f"{r.dir}: mode G has no final checkpoint ({r.state(r.points.trial_id[0])})")
    r.say(*[f"- G -> {m}: skipped ({m} has no final checkpoint)" for m, c in final.items() if c is None])
    connect(r, [(f"G-{m}", final["G"], c) for m, c in final.items() if m != "G" and c is not None],
            curve_epochs, images, t_points)
