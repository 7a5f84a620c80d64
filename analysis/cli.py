"""`heurbench analyze cca|connect|plane|sharpness|geometry|swa|frequency`: checkpoints in, Parquet + PNG out.

Every sub-command rebuilds models from the checkpoints' `model_spec`, loads data from the
first checkpoint's `data_spec` (overridden by `--data spec.yaml` and `--set key=value`),
writes rows under <sweep>/analysis/<kind>/, figures under <sweep>/figures/, and models it
makes (curve bends, SWA averages) as checkpoints under <sweep>/derived/<kind>/.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from analysis import plots
from analysis.activations import fixed_inputs
from analysis.cca import MEASURES, PERMUTATIONS, cca_rows, underdetermined
from analysis.connectivity import KINDS, connect
from analysis.frequency import frequency
from analysis.geometry import PAIRS, geometry, segments
from analysis.landscape import plane
from analysis.loading import Checkpoints
from analysis.sharpness import BN_MODES, ITERS, TOL, sharpness
from analysis.swa import swa_rows
from harness.errors import CheckpointError, ConfigError, DataError, ResultsError
from harness.yamlfile import parse_yaml, read_yaml

log = logging.getLogger("heurbench.analysis")


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Data-spec keys from --data spec.yaml, then each --set key=value."""
    spec = {}
    if args.data:
        loaded = read_yaml(args.data, empty_ok=True) or {}
        spec.update(loaded.get("data", loaded))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        spec[key] = parse_yaml(value, f"--set {item}")
    return spec


def run_cca(a: argparse.Namespace, cs: Checkpoints) -> None:
    split = cs.batches(a.split)
    inputs = fixed_inputs(split.inputs, a.inputs, a.input_seed, a.split)
    rows = cca_rows(cs.model(0), cs.model(1), inputs, split.transform, a.batch_size, a.layers, a.layers_b or a.layers,
                    a.measure, a.conv, a.pool_to, a.max_points, a.seed, getattr(torch, a.dtype), a.permutations)
    written = cs.write("cca", rows, measure=a.measure, conv=a.conv, inputs=len(inputs), split=a.split,
                       permutations=a.permutations)
    if summary := underdetermined(rows):
        log.warning("%s: %s", a.measure, summary)
    title = f"{a.measure}: {cs.ids[0]}\nvs {cs.ids[1]}"
    plots.similarity_heatmap(rows, cs.run.figure_of(written, "heatmap"), title, cs.ids[1], cs.ids[0])
    diag = rows[rows.index_a == rows.index_b]
    plots.diagonal_lines(diag, cs.run.figure_of(written, "diagonal"), title=title)
    print(diag[["layer_a", "similarity", "null_mean", "n", "d_a", "d_b", "underdetermined"]].to_string(index=False))


def run_connect(a: argparse.Namespace, cs: Checkpoints) -> None:
    splits, epochs = cs.splits(a.train_images, a.test_images), sorted(set(a.eval_epochs or [a.epochs]))
    rows, bars, bend = connect(cs.model(0), cs.ckpts[0]["model"], cs.ckpts[1]["model"], splits, splits["train"],
                               a.curve, epochs, a.t_points, a.lr, a.momentum, a.weight_decay, a.seed)
    params = dict(curve=a.curve, epochs=epochs[-1], lr=a.lr)
    written = cs.write("connect", rows, **params)
    path = cs.save(cs.run.derived_of(written, f"bend-{a.curve}"), bend, "connect", ends=cs.ids)
    cs.write("connect_barrier", bars.assign(bend=str(path.relative_to(cs.run.path))), **params)
    print(bars.to_string(index=False))
    print(f"bend checkpoint: {path}")
    final = rows[rows.curve_epoch.isin([0, epochs[-1]])].assign(error=lambda d: 1 - d["accuracy"])
    for metric in ("loss", "error"):
        plots.lines(final, "t", metric, cs.run.figure_of(written, metric), by=["path", "split"],
                    title=f"{cs.ids[0]} -> {cs.ids[1]}")


def run_plane(a: argparse.Namespace, cs: Checkpoints) -> None:
    splits = cs.splits(a.train_images, a.test_images)
    grid, where = plane(cs.model(0), cs.states(), splits, splits["train"], a.grid, a.margin)
    written = cs.write("plane", grid, grid=a.grid, margin=a.margin)
    cs.write("plane_points", where, grid=a.grid, margin=a.margin)
    for split in ("train", "test"):
        plots.plane_contour(grid[grid["split"] == split], "loss", where, cs.run.figure_of(written, f"{split}-loss"),
                            f"{split} loss on the plane through\n" + "\n".join(cs.ids[:3]))
    print(where.to_string(index=False))


def run_sharpness(a: argparse.Namespace, cs: Checkpoints) -> None:
    train = cs.batches("train", a.train_images)
    df = sharpness(cs.by_id(), train, a.method, a.iters, a.tol, a.probes, a.seed, cs.device, a.bn)
    written = cs.write_each("sharpness", df, ["ckpt"], method=a.method, iters=a.iters, tol=a.tol, probes=a.probes,
                            images=len(train), bn=a.bn)
    df = df.assign(trial=df.ckpt.str.split("/").str[0]).sort_values(["trial", "iteration"])
    print(df.to_string(index=False))
    plots.lines(df, "iteration", "top_eigenvalue", cs.run.figure_of(written[-1], "vs-iteration"), by=["trial"])


def run_geometry(a: argparse.Namespace, cs: Checkpoints) -> None:
    model, states = cs.model(0), cs.states()
    rows = geometry(model, states, a.pairs)
    cs.write_each("geometry", rows, ["ckpt_a", "ckpt_b"])
    print(rows.to_string(index=False))
    if a.barrier:
        along, bars = segments(model, states, cs.splits(a.train_images, a.test_images),
                               cs.batches("train", a.train_images), a.pairs, a.t_points)
        written = cs.write_each("interpolation", along, ["ckpt_a", "ckpt_b"])
        cs.write_each("error_barrier", bars, ["ckpt_a", "ckpt_b"])
        print(bars.to_string(index=False))
        for path, (key, part) in zip(written, along.groupby(["ckpt_a", "ckpt_b"], sort=False)):
            plots.lines(part.assign(error=lambda d: 1 - d["accuracy"]), "t", "error", cs.run.figure_of(path, "error"),
                        by=["split"], title=" -> ".join(key))


def run_swa(a: argparse.Namespace, cs: Checkpoints) -> None:
    splits = cs.splits(a.train_images, a.test_images)
    rows, model = swa_rows(cs.model(0), [c["model"] for c in cs.ckpts], splits, splits["train"])
    written = cs.write("swa", rows)
    path = cs.save(Path(a.save) if a.save else cs.run.derived_of(written, "swa"), model, "swa", averaged=cs.ids)
    print(rows.to_string(index=False))
    print(f"averaged checkpoint: {path}")


def run_frequency(a: argparse.Namespace, cs: Checkpoints) -> None:
    test = cs.batches("test", a.test_images)
    df = frequency(cs.by_id(), test, tuple(a.cutoffs), a.box, cs.device)
    written = cs.write_each("frequency", df, ["ckpt"], cutoffs=list(a.cutoffs), box=a.box, images=len(test))
    print(df.pivot(index="ckpt", columns="variant", values="accuracy").to_string())
    plots.lines(df, "variant", "accuracy", cs.run.figure_of(written[-1], "accuracy"), by=["ckpt"])


def _common(p: argparse.ArgumentParser, count: int | str) -> None:
    p.add_argument("checkpoints", nargs=count, metavar="CKPT", help="checkpoint files (.pt)")
    p.add_argument("--data", help="data spec YAML (a mapping, or one with a 'data' key); default: the checkpoint's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one data-spec key")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--out", help="sweep folder for analysis/ and figures/ (default: the first checkpoint's sweep)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--train-images", type=int, help="use the first N train images (BN, curve training, Hessian)")
    p.add_argument("--test-images", type=int, help="use the first N test images")
    p.add_argument("--seed", type=int, default=0)


def _configure_cca(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measure", choices=sorted(MEASURES), default="svcca")
    p.add_argument("--layers", nargs="+", help="module paths of the first model (default: its probe_layers)")
    p.add_argument("--layers-b", nargs="+", help="module paths of the second model (default: --layers, or its probes)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--inputs", type=int, help="number of fixed input images, at most the split's (default: all of "
                   "it); the data points of flat layers, so keep it >> 10x the widths of a pair")
    p.add_argument("--input-seed", type=int, help="random subset with this seed (default: the first N)")
    p.add_argument("--conv", choices=["positions", "mean"], default="positions")
    p.add_argument("--pool-to", type=int, default=8, help="average-pool conv maps to at most this size when captured")
    p.add_argument("--max-points", type=int, default=20_000,
                   help="data points per pair at most (seeded subsample); all pairs of a heatmap use the same n")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="float32: faster on a GPU")
    p.add_argument("--permutations", type=int, default=PERMUTATIONS,
                   help="row shuffles of the second layer for the null (noise floor) of every pair")


def _configure_connect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curve", choices=[k for k in KINDS if k != "segment"], default="polychain")
    p.add_argument("--epochs", type=int, default=20, help="curve-training epochs (train images, no augmentation)")
    p.add_argument("--eval-epochs", type=int, nargs="+", help="evaluate the curve after each of these epochs")
    p.add_argument("--lr", type=float, default=0.015)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--t-points", type=int, default=21)


def _configure_plane(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", type=int, default=21, help="grid points per axis")
    p.add_argument("--margin", type=float, default=0.2, help="grid margin, as a fraction of the points' span")


def _configure_sharpness(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["lanczos", "power"], default="lanczos")
    p.add_argument("--iters", type=int, default=ITERS, help="Hessian-vector products at most")
    p.add_argument("--tol", type=float, default=TOL,
                   help="relative tolerance: Lanczos stops once the top Ritz residual is below tol x its value")
    p.add_argument("--probes", type=int, default=0, help="Hutchinson probes for the Hessian trace (0: skip)")
    p.add_argument("--bn", choices=BN_MODES, default="running",
                   help="BN in the loss: its running statistics (eval mode) or each batch's own, as in training")


def _configure_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", choices=list(PAIRS), default="all",
                   help="which pairs: all, neighbours in the given order, or the first against each other")
    p.add_argument("--barrier", action="store_true", help="also evaluate the straight segment and its error barrier")
    p.add_argument("--t-points", type=int, default=11)


def _configure_swa(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save", help="where to save the averaged checkpoint (default: <sweep>/derived/swa/)")


def _configure_frequency(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cutoffs", type=float, nargs=2, default=[1 / 3, 2 / 3], metavar=("LOW", "HIGH"),
                   help="band edges in Nyquist units")
    p.add_argument("--box", type=float, default=0.5, help="side of the central box blanked for the background variant")


Run = Callable[[argparse.Namespace, Checkpoints], None]

COMMANDS: dict[str, tuple[Run, Callable[[argparse.ArgumentParser], None], int | str, str]] = {
    "cca": (run_cca, _configure_cca, 2, "layer x layer CCA/SVCCA/PWCCA/CKA heatmap between two checkpoints"),
    "connect": (run_connect, _configure_connect, 2, "train a mode-connecting curve; loss along curve and segment"),
    "plane": (run_plane, _configure_plane, "+", "loss on the plane through three checkpoints; rest projected"),
    "sharpness": (run_sharpness, _configure_sharpness, "+",
                  "top Hessian eigenvalue (and trace) of the train loss, BN statistics recomputed on its images"),
    "geometry": (run_geometry, _configure_geometry, "+", "distances, angles (net, layer groups), error barriers"),
    "swa": (run_swa, _configure_swa, "+", "average checkpoints, update BN, evaluate, save the average"),
    "frequency": (run_frequency, _configure_frequency, "+", "accuracy on low/mid/high-pass and background test sets"),
}


def add_parser(subparsers, help: str) -> argparse.ArgumentParser:
    """Register `analyze` and its sub-commands on a `parser.add_subparsers()` object; each sets func=."""
    analyze = subparsers.add_parser("analyze", help=help)
    sub = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, (run, configure, count, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        _common(p, count)
        configure(p)
        p.set_defaults(func=_entry(run))
    return analyze


def _entry(run: Run) -> Callable[[argparse.Namespace], None]:
    """The sub-command's func: analysis errors (bad inputs, rank-deficient layers) end as one line, not a traceback."""
    def func(args: argparse.Namespace) -> None:
        try:
            cs = Checkpoints.open(args.checkpoints, _data_overrides(args), args.device, args.out, args.batch_size)
            run(args, cs)
            for path in cs.written:
                log.info("wrote %s", path)
        except (ConfigError, DataError, CheckpointError, ResultsError):
            raise  # bad input: heurbench's one line, exit 2
        except ValueError as err:
            raise SystemExit(f"heurbench analyze {args.analysis}: {err}") from None
    return func
