"""The study interface: what `heurbench report` needs of a study, declared once.

A study is a `Study` subclass registered with `@register.study(name)` (heurbench.register); the seven built-in
studies (analysis/studies/) are registered the same way. It declares, as class attributes:

- `claims`: its claims (analysis.claims `Claim` / `RateClaim`), with their statistics and decision rules,
  written before any run;
- `sizes`: the default size of each analysis it runs (keys among `analysis.report.SIZES`; `heurbench report`
  options override them), passed to `analyze` as keyword arguments;
- `columns`: the point columns (sweep axes, e.g. `tags.run`) its analyses read; a sweep without one of them is
  refused with one line before anything is computed;

and `analyze(r, **sizes)`: runs its analyses on the sweep folder (`analysis.report.Report`: its points, metrics,
checkpoints; figures and tables written through it) and returns the per-seed frame its claims read (index
seed, one column per quantity). The report then judges the claims on that frame and adds the claims table and
the benchmark sections, the same for every study.
"""
from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any, ClassVar

from harness.registry import Entry, register

if TYPE_CHECKING:
    import pandas as pd

    from analysis.report import Report


class Study:
    """Base class of every study; see the module docstring."""

    claims: ClassVar[list] = []
    sizes: ClassVar[dict[str, Any]] = {}
    columns: ClassVar[tuple[str, ...]] = ()

    def analyze(self, r: "Report", **sizes) -> "pd.DataFrame":
        raise NotImplementedError


def check_study(e: Entry) -> str | None:
    """The registration contract of a study (None, or what is wrong, in one line)."""
    from analysis.claims import Claim, RateClaim
    from analysis.report import SIZES

    cls = e.obj
    if not (isinstance(cls, type) and issubclass(cls, Study)):
        return "a study must be a subclass of analysis.study.Study (heurbench.Study)"
    if cls.analyze is Study.analyze:
        return "it does not define analyze(self, r, **sizes)"
    bad = [c for c in cls.claims if not isinstance(c, (Claim, RateClaim))]
    if not cls.claims or bad:
        return "claims: expected a non-empty list of analysis.claims Claim / RateClaim"
    ids = [c.id for c in cls.claims]
    if len(set(ids)) != len(ids):
        return f"claims: ids repeat ({sorted({i for i in ids if ids.count(i) > 1})})"
    odd = [i for i in ids if not re.fullmatch(r"[\w.-]+", i)]
    if odd:
        return f"claims: id {odd[0]!r} is no file name (letters, digits, _ . -); the report writes claim_<id>.png"
    unknown = sorted(set(cls.sizes) - set(SIZES))
    if unknown:
        return f"sizes: {unknown[0]!r} is no report option; expected keys among {sorted(SIZES)}"
    params = inspect.signature(cls.analyze).parameters
    takes = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()) and takes != set(cls.sizes):
        return f"analyze takes {sorted(takes)} but sizes declares {sorted(cls.sizes)}"
    return None


register.contract("study", check_study)
