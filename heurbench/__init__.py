"""heurbench: controlled studies of training heuristics. The command-line layer (the `heurbench` console script,
the quickstart, results queries) and the names a plug-in needs:

- `register`: `@register.model(name)`, `.dataset`, `.optimizer`, `.schedule`, `.heuristic`, `.study`;
- `Options`: base class of a plug-in component's config fields (a pydantic model; unknown keys are refused);
- `Heuristic`: the heuristic interface (harness.heuristics); `Study`: the study interface (analysis.study).

`Heuristic` and `Study` are imported when first asked for, so `import heurbench` stays light.
"""
from harness.registry import register

__all__ = ["register", "Options", "Heuristic", "Study"]


def __getattr__(name: str):
    if name == "Options":
        from harness.config import Strict

        return Strict
    if name == "Heuristic":
        from harness.heuristics import Heuristic

        return Heuristic
    if name == "Study":
        from analysis.study import Study

        return Study
    raise AttributeError(f"module 'heurbench' has no attribute {name!r}")
