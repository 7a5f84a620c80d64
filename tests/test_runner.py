"""harness/runner.py: the Tune worker's unraisable hook drops only SystemExit (Ray's SIGTERM exit)."""
from __future__ import annotations

import sys
import weakref

from harness.runner import quiet_sigterm_exit


class Dies:
    pass


def test_quiet_sigterm_exit_drops_only_system_exit(monkeypatch, capsys):
    monkeypatch.setattr(sys, "unraisablehook", quiet_sigterm_exit)
    for exc in (SystemExit(1), ValueError("kept")):
        def callback(ref, exc=exc):  # an exception in a weakref callback is "unraisable"
            raise exc
        obj = Dies()
        ref = weakref.ref(obj, callback)  # noqa: F841 (kept alive until obj dies)
        del obj  # the callback runs here
    err = capsys.readouterr().err
    assert "ValueError: kept" in err and "SystemExit" not in err
