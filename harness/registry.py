"""The one registry of components: models, data sets, optimizers, schedules, heuristics and studies.

Every component, built-in or not, is registered the same way, with a decorator at its definition::

    from heurbench import register

    @register.optimizer("lars", options=LarsOptions)
    def lars(cfg, params): ...

Where registrations come from:
- built-ins: `BUILTIN` says which module defines each built-in name, so validating a config (and `heurbench sweep
  plan`) knows every built-in name without importing torch; the module is imported when the component is first
  used, and must register exactly the names `BUILTIN` promises for it (checked then);
- installed packages: modules advertised in the entry-point group `heurbench.plugins`, imported the first time
  a config names something not built in (or for `heurbench plugins`);
- plain modules: `plugins: [my_heuristics]` in a trial or sweep YAML, found next to the YAML or on PYTHONPATH
  (`import_plugins`; the folder is put on PYTHONPATH too, so that every process the run starts finds it).

This module imports neither torch nor pydantic. Contracts that need them are checked by the modules that use a
component (harness.models.build, harness.data.load, harness.optim.build, harness.heuristics, analysis.study).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from harness.errors import ConfigError

KINDS = {"model": "model", "dataset": "data set", "optimizer": "optimizer", "schedule": "schedule",
         "heuristic": "heuristic", "study": "study"}  # kind -> how an error names it
GROUP = "heurbench.plugins"  # the entry-point group of plug-in packages

# which module registers each built-in component
BUILTIN: dict[str, dict[str, str]] = {
    "model": dict.fromkeys(("vgg11", "vgg16", "resnet18", "resnet32", "si_resnet18", "student_cnn"),
                           "harness.models"),
    "dataset": dict.fromkeys(("cifar10", "cifar100", "parquet", "digits"), "harness.data"),
    "optimizer": dict.fromkeys(("sgd", "adam", "gi_adam", "sphere_sgd"), "harness.optim"),
    "schedule": dict.fromkeys(("constant", "step", "linear", "cosine", "sgdr"), "harness.schedules"),
    "heuristic": {"warmup": "harness.warmup", "freeze": "harness.freeze", "distill": "harness.distill"},
    "study": {"s1": "analysis.studies.s1_connectivity", "s2": "analysis.studies.s2_sgdr",
              "s3": "analysis.studies.s3_warmup", "quickstart": "analysis.studies.s3_warmup",
              "s4": "analysis.studies.s4_distill", "s5": "analysis.studies.s5_lr_regimes",
              "s6": "analysis.studies.s6_warmup_stability", "s7": "analysis.studies.s7_cosine_budget"},
}


class PluginError(ConfigError):
    """A plug-in that cannot be imported or breaks a contract, in one line (exit 2)."""


@dataclass
class Entry:
    """One registered component."""
    kind: str
    name: str
    obj: Any
    module: str
    options: Any = None  # the component's own config fields (a pydantic model), or None
    extra: dict = field(default_factory=dict)  # what the kind's decorator was also given

    @property
    def builtin(self) -> bool:
        return BUILTIN[self.kind].get(self.name) == self.module

    def origin(self) -> dict:
        """Where this component's code came from: its module, and the installed package's version, or for a plain
        module file a content hash (what a trial records, and `--resume` compares)."""
        mod = sys.modules.get(self.module)
        out = {"module": self.module}
        top = self.module.split(".")[0]
        dists = distributions().get(top)
        if dists:
            out["package"] = dists[0]
            out["version"] = importlib.metadata.version(dists[0])
        path = getattr(mod, "__file__", None)
        if path and (not dists or self.builtin is False):
            out["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        return out


@functools.lru_cache(maxsize=1)
def distributions() -> dict[str, list[str]]:
    """Top-level module -> installed distributions providing it (read once per process)."""
    return importlib.metadata.packages_distributions()


Check = Callable[[Entry], Optional[str]]  # a kind's registration contract: None, or what is wrong


class Registry:
    """Components by kind and name. `register.<kind>(name, options=None)` is the decorator of each kind."""

    def __init__(self):
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        self.checks: dict[str, Check] = {}
        self.loaded: set[str] = set()  # built-in modules imported and checked
        self.entry_points_loaded = False
        self.paths: list[str] = []  # folders of plain plug-in modules (`plugins:` next to a YAML)

    # -- registration --------------------------------------------------------------------------------------------
    def add(self, kind: str, name: str, obj: Any, options: Any = None, **extra) -> Any:
        """Register `obj` as the `kind` component `name`; returns `obj` (so this is a decorator's body)."""
        if kind not in KINDS:
            raise PluginError(f"unknown component kind {kind!r}; expected one of {sorted(KINDS)}")
        module = getattr(obj, "__module__", None) or "?"
        if not isinstance(name, str) or not name or ":" in name or name.strip() != name:
            raise PluginError(f"{module}: {KINDS[kind]} name {name!r}: expected a non-empty string without ':' or "
                              f"spaces")
        old = self.entries[kind].get(name)
        if old is not None and old.obj is not obj:
            raise PluginError(f"{KINDS[kind]} {name!r} is registered twice: by {old.module} and by {module}")
        builtin_module = BUILTIN[kind].get(name)
        if builtin_module and builtin_module != module:
            raise PluginError(f"{KINDS[kind]} {name!r} is registered twice: by {builtin_module} (built in) and by "
                              f"{module}")
        if not callable(obj):
            raise PluginError(f"{module}: {KINDS[kind]} {name!r}: registered a {type(obj).__name__}; expected a "
                              f"function or class")
        entry = Entry(kind, name, obj, module, options, extra)
        problem = self.checks[kind](entry) if kind in self.checks else None
        if problem:
            raise PluginError(f"{module}: {KINDS[kind]} {name!r}: {problem}")
        self.entries[kind][name] = entry
        return obj

    def decorator(self, kind: str) -> Callable:
        def register_kind(name: str, options: Any = None, **extra) -> Callable[[Any], Any]:
            return lambda obj: self.add(kind, name, obj, options, **extra)

        register_kind.__doc__ = f"Decorator: register a {KINDS[kind]} under `name` (its config fields: `options`)."
        return register_kind

    def __getattr__(self, kind: str) -> Callable:
        if kind in KINDS:
            return self.decorator(kind)
        raise AttributeError(f"register.{kind}: no such component kind; expected one of {sorted(KINDS)}")

    def contract(self, kind: str, check: Check) -> None:
        """What every `kind` registration must satisfy, checked at registration (set by the module that uses the
        kind; registrations made before it is set are checked then)."""
        self.checks[kind] = check
        for e in list(self.entries[kind].values()):
            problem = check(e)
            if problem:
                del self.entries[kind][e.name]
                raise PluginError(f"{e.module}: {KINDS[kind]} {e.name!r}: {problem}")

    # -- lookup --------------------------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Every name of `kind` known so far: built in, and registered by plug-ins already imported."""
        return sorted(set(BUILTIN[kind]) | set(self.entries[kind]))

    def known(self, kind: str, name: str) -> str:
        """The registered name of a `kind` component: `name` itself (built in, already registered, or from an entry
        point, which are imported now if they were not), or for a reference `module:attr` the name under which
        that object is registered (the module imported now); else the one-line error listing the known names,
        with did-you-mean. Imports no built-in module, so validating a config of built-ins needs no torch."""
        if name in BUILTIN[kind] or name in self.entries[kind]:
            return name
        if isinstance(name, str) and ":" in name:
            return self.by_reference(kind, name)
        self.load_entry_points()
        if name in self.entries[kind]:
            return name
        close = difflib.get_close_matches(name, self.names(kind), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown {KINDS[kind]} {name!r}{hint}; expected one of {self.names(kind)} (or a plug-in's: "
                         f"`plugins:` in the YAML, or a package in the {GROUP!r} entry points)")

    def by_reference(self, kind: str, ref: str) -> str:
        """The registered name of the object `module:attr` names (the module imported now)."""
        module, _, attr = ref.partition(":")
        import_module(module, f"{KINDS[kind]} {ref!r}")
        obj = getattr(sys.modules[module], attr, None)
        if obj is None:
            raise ValueError(f"{ref}: module {module!r} has no attribute {attr!r}")
        for e in self.entries[kind].values():
            if e.obj is obj:
                return e.name
        raise ValueError(f"{ref}: not a registered {KINDS[kind]} (decorate it with @register.{kind}(name))")

    def get(self, kind: str, name: str) -> Entry:
        """The registered component (by name or `module:attr`), importing its module if it is a built-in not used
        before."""
        name = self.known(kind, name)
        if name in BUILTIN[kind]:
            self.load_builtin(BUILTIN[kind][name])
        return self.entries[kind][name]

    def options(self, kind: str, name: str) -> Any:
        """The options model of a plug-in component (None for built-ins, whose fields are the section's own, and
        for plug-ins that declare none). Imports only plug-in modules, never a built-in one."""
        if name in BUILTIN[kind]:
            return None
        return self.entries[kind][self.known(kind, name)].options

    def load_builtin(self, module: str) -> None:
        if module in self.loaded:
            return
        importlib.import_module(module)
        self.loaded.add(module)
        for kind, names in BUILTIN.items():
            promised = {n for n, m in names.items() if m == module}
            got = {n for n, e in self.entries[kind].items() if e.module == module}
            if promised != got:
                raise RuntimeError(f"{module}: registers {KINDS[kind]}s {sorted(got)} but harness.registry.BUILTIN "
                                   f"promises {sorted(promised)}")

    def load_all(self) -> None:
        """Every built-in module and every entry point imported (`heurbench plugins`)."""
        for names in BUILTIN.values():
            for module in sorted(set(names.values())):
                self.load_builtin(module)
        self.load_entry_points()

    # -- plug-in modules -----------------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        if self.entry_points_loaded:
            return
        self.entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=GROUP):
            dist = getattr(ep.dist, "name", None) or "?"
            import_module(ep.value.split(":")[0], f"entry point {ep.name!r} of package {dist!r}")


register = Registry()


def import_module(module: str, where: str) -> None:
    """Import a plug-in module; any failure is one PluginError line naming the module and its exception."""
    if module in sys.modules:
        return
    try:
        importlib.import_module(module)
    except PluginError:
        raise
    except Exception as err:  # the plug-in's own code failed: its exception, in one line
        raise PluginError(f"plug-in module {module!r} ({where}) failed to import: {type(err).__name__}: "
                          f"{' '.join(str(err).split())}") from None


def import_plugins(modules: list[str], near: Optional[Path] = None) -> None:
    """Import the modules a YAML's `plugins:` lists; `near` (the YAML's folder) is searched first, and put on
    PYTHONPATH so that the processes a run starts (DDP ranks, Ray workers, SLURM jobs) find the same modules."""
    if not modules:
        return
    if near is not None:
        folder = str(Path(near).resolve())
        if folder not in register.paths:
            register.paths.append(folder)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if folder not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([folder, *paths])
    for m in modules:
        import_module(m, "plugins: in " + (str(near) if near is not None else "the config"))


def signature_names(fn: Callable) -> list[str]:
    """Parameter names of a callable (for contracts on a component's call signature)."""
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []
