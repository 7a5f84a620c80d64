"""The studies' report recipes, one module each, named for the study; `heurbench report` picks one by the
sweep name's prefix (s1..s7) or --study."""
from __future__ import annotations

from typing import Callable

from analysis.report import Report
from analysis.studies.s1_connectivity import report_connectivity
from analysis.studies.s2_sgdr import report_sgdr
from analysis.studies.s3_warmup import report_warmup
from analysis.studies.s4_distill import report_distill
from analysis.studies.s5_lr_regimes import report_lr_regimes
from analysis.studies.s6_warmup_stability import report_warmup_stability
from analysis.studies.s7_cosine_budget import report_cosine_budget

STUDIES: dict[str, Callable[[Report], None]] = {
    "s1": report_connectivity, "s2": report_sgdr, "s3": report_warmup, "s4": report_distill, "s5": report_lr_regimes,
    "s6": report_warmup_stability, "s7": report_cosine_budget, "quickstart": report_warmup}
