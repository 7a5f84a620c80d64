"""`python -m analysis.studies.s5_pilot RUN_DIR`: the regime of each (seed, PLR) of an S5 pre-training sweep and
whether any reached regime 1, the only output of the S5 pilot (sweeps/claims/s5_pilot.yaml); no claim is judged."""
from __future__ import annotations

import argparse

from analysis.report import Report
from analysis.studies.s5_lr_regimes import regimes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.studies.s5_pilot", description=__doc__.split(":", 1)[1])
    p.add_argument("run_dir", help="runs/<sweep> of an S5 pre-training sweep")
    df = regimes(Report(p.parse_args(argv).run_dir))
    print(df[["seed", "plr", "state", "train_accuracy", "train_loss_start", "train_loss_end", "regime"]]
          .to_markdown(index=False, floatfmt=".4g"))
    print(f"regime 1 reached: {'yes' if (df.regime == '1').any() else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
