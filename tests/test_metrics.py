"""harness.metrics: the one row builder and its schema, and the Parquet parts a trial writes."""
import math

import pandas as pd

from harness.layout import RunDir
from harness.metrics import FIELDS, MetricsWriter, row


def test_row_has_exactly_the_schema_fields_in_order_with_float_and_int_types():
    r = row("step", "train", epoch=1, iteration=7, lr=0.1, loss=2, weight_norm=3, wall_time=0.5, images_per_s=9)
    assert tuple(r) == FIELDS
    assert r["iteration"] == 7 and isinstance(r["iteration"], int)
    assert all(isinstance(r[k], float) for k in FIELDS if k not in ("kind", "split", "iteration"))
    assert math.isnan(r["accuracy"]) and math.isnan(r["grad_norm"])  # a step row has no accuracy


def test_writer_parts_follow_the_base_columns_and_a_resume_drops_later_parts(tmp_path):
    run = RunDir(tmp_path / "sweep")
    w = MetricsWriter(run, "abc", {"sweep": "sweep", "trial_id": "abc", "seed": 0})
    for it in range(3):
        w.add(row("step", "train", epoch=it, iteration=it, lr=0.1, loss=1.0, weight_norm=1.0, wall_time=0.0,
                  images_per_s=1.0))
        assert w.flush() == it + 1
    df = pd.read_parquet(run.metrics)
    assert list(df.columns) == ["sweep", "trial_id", "seed", *FIELDS] and list(df.iteration) == [0, 1, 2]
    MetricsWriter(run, "abc", {}, parts=1)  # resuming after part 0: parts 1 and 2 are regenerated
    assert sorted(run.metrics_parts("abc")) == [0]
