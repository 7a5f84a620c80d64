"""harness.layout.RunDir.reference: '@sweep:point:file' references resolve inside the results root only."""
import pytest
import yaml

from harness.errors import ConfigError
from harness.layout import RunDir


def resolve(ref, out):
    return RunDir(out).reference(ref)


@pytest.fixture
def runs(tmp_path):
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "sweep.yaml").write_text(yaml.safe_dump({"points": [{"index": 0, "trial_id": "abc"}]}))
    return tmp_path


def test_a_reference_names_a_checkpoint_of_a_sibling_sweep(runs):
    assert resolve("@pre:0:last.pt", runs / "fine") == runs / "pre" / "trials" / "abc" / "ckpt" / "last.pt"
    assert resolve("plain/path.pt", runs / "fine").as_posix() == "plain/path.pt"


@pytest.mark.parametrize("ref", ["@..:0:last.pt", "@../pre:0:last.pt", "@pre:0:../../../etc/passwd",
                                 "@pre:0:/abs/last.pt", "@/tmp:0:last.pt", "@pre:0:..", "@.:0:last.pt",
                                 "@pre:0:sub/last.pt"])
def test_escapes_from_the_results_root_are_one_line_errors(runs, ref):
    with pytest.raises(ConfigError, match="must be a plain name") as err:
        resolve(ref, runs / "fine")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ref, message", [("@pre:x:last.pt", "expected '@<sweep>:<point index>:<file>'"),
                                          ("@pre:3:last.pt", r"has points \[0\]")])
def test_malformed_references(runs, ref, message):
    with pytest.raises(ConfigError, match=message):
        resolve(ref, runs / "fine")
