"""The example's study: two other large-batch heuristics, LARS and warmup of the FC stack alone, against warmup
of every layer, in S3's quickstart setting (sweep.yaml). Claims declared here before any run (2026-12-05)."""
from __future__ import annotations

import pandas as pd

from analysis.claims import DIFFERENCE, Claim, RateClaim, within
from analysis.report import Report, accuracy_curves, outcomes, over_seeds
from heurbench import Study, register

CHANCE = 0.1  # 10 classes
RATE = "rate of unstable seeds (diverged, or final test accuracy <= chance + 0.1)"


@register.study("lars_and_friends")
class LarsAndFriends(Study):
    """LB + LARS and LB + FC-only warmup vs LB + warmup: final test accuracy (paired by seed) and instability."""

    claims = [
        Claim("lars_and_friends", "lars_matches_warmup", "LARS (You et al. 2017) is an alternative to warmup for "
              "large batches: LB + LARS ends within 0.02 of LB + warmup.",
              "final test accuracy, LB + LARS minus LB + warmup", ("lb_lars", "lb_warmup"), within(0.02),
              bounds=DIFFERENCE),
        Claim("lars_and_friends", "fc_warmup_matches_warmup", "Warming up only the FC stack is enough (closer look, "
              "sec. 6): LB + FC-only warmup ends within 0.02 of LB + warmup.",
              "final test accuracy, LB + FC-only warmup minus LB + warmup", ("lb_fc_warmup", "lb_warmup"),
              within(0.02), bounds=DIFFERENCE),
        RateClaim("lars_and_friends", "lars_lowers_instability", "LB + LARS is unstable on fewer seeds than LB.",
                  f"{RATE}, LB + LARS vs LB", ("unstable_lb_lars", "unstable_lb")),
        RateClaim("lars_and_friends", "fc_warmup_lowers_instability", "LB + FC-only warmup is unstable on fewer "
                  "seeds than LB.", f"{RATE}, LB + FC-only warmup vs LB", ("unstable_lb_fc_warmup", "unstable_lb")),
    ]
    sizes = {}
    columns = ("tags.run",)

    def analyze(self, r: Report) -> pd.DataFrame:
        """Test accuracy per run over seeds (figure and tables); returns final accuracy and `unstable` per seed."""
        acc = accuracy_curves(r, "tags.run")
        stats = over_seeds(r, acc, "tags.run", "accuracy_by_run")
        r.say("## Test accuracy over seeds (mean, 95% t interval)", "", stats.to_markdown(index=False, floatfmt=".4f"),
              "", "Per trial:", "", acc.to_markdown(index=False, floatfmt=".4f"), "")
        return outcomes(acc, "tags.run", CHANCE)
