"""`heurbench analyze cca|connect|plane|sharpness|geometry|swa|frequency`: checkpoints in, Parquet + PNG out.

Every sub-command rebuilds models from the checkpoints' `model_spec`, loads data from the
first checkpoint's `data_spec` (overridden by `--data spec.yaml` and `--set key=value`),
writes rows under <sweep>/analysis/<kind>/, figures under <sweep>/figures/, and models it
makes (curve bends, SWA averages) as checkpoints under <sweep>/derived/<kind>/.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import yaml

from analysis import checkpoints, plots, results
from analysis.activations import capture, fixed_inputs
from analysis.cca import MEASURES, layer_similarity
from analysis.connectivity import KINDS, Curve, barriers, evaluate_path, train_curve
from analysis.evaluation import Batches, evaluate, load_vector, param_vector, update_bn
from analysis.frequency import frequency_accuracy
from analysis.geometry import distances, interpolate
from analysis.landscape import Plane, evaluate_plane, grid_axes
from analysis.sharpness import hutchinson_trace, top_eigenvalue
from analysis.swa import swa

log = logging.getLogger("heurbench.analysis")


@dataclass
class Context:
    """What every sub-command needs: the checkpoints, their ids, the data, the device, the output folder."""

    args: argparse.Namespace
    ckpts: list[dict[str, Any]]
    ids: list[str]
    data: Any
    device: torch.device
    sweep: Path

    def model(self, i: int = 0) -> torch.nn.Module:
        return checkpoints.build_model(self.ckpts[i], self.device)

    def batches(self, split: str, n: int | None = None) -> Batches:
        part = getattr(self.data, split)
        if part is None:
            raise SystemExit(f"the data spec has no {split} split")
        return Batches(part.images, part.labels, self.args.batch_size, self.data.normalize).head(n)

    def splits(self) -> dict[str, Batches]:
        """Train (first --train-images), val (if the data has one) and test (first --test-images) batches."""
        out = {"train": self.batches("train", self.args.train_images)}
        if self.data.val is not None:
            out["val"] = self.batches("val")
        return {**out, "test": self.batches("test", self.args.test_images)}

    def write(self, kind: str, rows: list[dict], ids: list[str] | None = None, **params) -> Path:
        path = results.write(self.sweep, kind, rows, self.ids if ids is None else ids, params)
        log.info("wrote %d %s rows to %s", len(rows), kind, path)
        return path

    def figure(self, written: Path, suffix: str) -> Path:
        """Figure path named after the Parquet part it shows: <sweep>/figures/<kind>-<digest>-<suffix>.png."""
        return self.sweep / "figures" / f"{written.parent.name}-{written.stem.removeprefix('part-')}-{suffix}.png"


def _data_spec(args: argparse.Namespace, ckpt: dict[str, Any]) -> dict[str, Any]:
    spec = dict(ckpt.get("data_spec") or {})
    if args.data:
        loaded = yaml.safe_load(Path(args.data).read_text()) or {}
        spec.update(loaded.get("data", loaded))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        spec[key] = yaml.safe_load(value)
    if not spec:
        raise SystemExit("no data spec: the checkpoint has none; pass --data spec.yaml or --set name=...")
    return spec


def _context(args: argparse.Namespace) -> Context:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpts = [checkpoints.load(p) for p in args.checkpoints]
    data = checkpoints.load_data(_data_spec(args, ckpts[0]))
    sweep = Path(args.out) if args.out else checkpoints.sweep_dir(args.checkpoints[0])
    return Context(args, ckpts, [checkpoints.checkpoint_id(c) for c in ckpts], data, device, sweep)


def _number(ckpt: dict[str, Any], key: str) -> float:
    value = ckpt.get(key)
    return math.nan if value is None else float(value)


def run_cca(ctx: Context) -> None:
    a = ctx.args
    model_a, model_b = ctx.model(0), ctx.model(1)
    layers_a = a.layers or model_a.probe_layers
    layers_b = a.layers_b or a.layers or model_b.probe_layers
    split = getattr(ctx.data, a.split)
    inputs = fixed_inputs(split.images, min(a.inputs, len(split.labels)), a.input_seed)
    acts_a = capture(model_a, layers_a, inputs, a.batch_size, ctx.data.normalize, a.pool_to)
    acts_b = capture(model_b, layers_b, inputs, a.batch_size, ctx.data.normalize, a.pool_to)
    heat = layer_similarity(acts_a, acts_b, a.measure, a.conv, a.max_points, a.seed, ctx.device,
                            getattr(torch, a.dtype))
    rows = [{"layer_a": la, "layer_b": lb, "index_a": i, "index_b": j, "similarity": float(heat[i, j])}
            for i, la in enumerate(layers_a) for j, lb in enumerate(layers_b)]
    written = ctx.write("cca", rows, measure=a.measure, conv=a.conv, inputs=len(inputs), split=a.split)
    title = f"{a.measure}: {ctx.ids[0]}\nvs {ctx.ids[1]}"
    plots.heatmap(heat.numpy(), layers_a, layers_b, ctx.figure(written, "heatmap"), title, ctx.ids[1], ctx.ids[0])
    diag = pd.DataFrame([r for r in rows if r["index_a"] == r["index_b"]])
    plots.lines(diag, "layer_a", "similarity", ctx.figure(written, "diagonal"), title=title)
    print(diag[["layer_a", "similarity"]].to_string(index=False))


def run_connect(ctx: Context) -> None:
    a = ctx.args
    model = ctx.model(0)
    w0, w1 = param_vector(model, ctx.ckpts[0]["model"]), param_vector(model, ctx.ckpts[1]["model"])
    splits, train = ctx.splits(), ctx.batches("train", a.train_images)
    ts = torch.linspace(0, 1, a.t_points).tolist()
    segment = evaluate_path(model, Curve(w0, w1, "segment"), ts, splits, train)
    rows = [{"path": "segment", "curve_epoch": 0, **r} for r in segment]
    curve = Curve(w0, w1, a.curve)
    optimizer = torch.optim.SGD([curve.theta], lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    steps_per_epoch, done = math.ceil(len(train) / a.batch_size), 0
    for epoch in sorted(set(a.eval_epochs or [a.epochs])):
        train_curve(model, curve, train, (epoch - done) * steps_per_epoch, optimizer, seed=a.seed + epoch)
        done = epoch
        rows += [{"path": a.curve, "curve_epoch": epoch, **r} for r in evaluate_path(model, curve, ts, splits, train)]
    params = dict(curve=a.curve, epochs=done, lr=a.lr)
    written = ctx.write("connect", rows, **params)
    load_vector(model, curve.theta.detach())
    bend = ctx.sweep / "derived" / "connect" / f"bend-{a.curve}-{written.stem.removeprefix('part-')}.pt"
    checkpoints.save_derived(bend, model, ctx.ckpts[0], "connect", ends=ctx.ids)
    summary = []
    for (path, epoch), part in pd.DataFrame(rows).groupby(["path", "curve_epoch"], sort=False):
        part_rows = part.to_dict("records")
        losses, errors = barriers(part_rows), barriers(part_rows, "error")
        summary += [{"path": path, "curve_epoch": epoch, "split": s, "loss_barrier": losses[s],
                     "error_barrier": errors[s], "bend": str(bend.relative_to(ctx.sweep))} for s in losses]
    ctx.write("connect_barrier", summary, **params)
    print(pd.DataFrame(summary).drop(columns="bend").to_string(index=False))
    print(f"bend checkpoint: {bend}")
    final = pd.DataFrame([r for r in rows if r["curve_epoch"] in (0, done)]).assign(error=lambda d: 1 - d["accuracy"])
    for metric in ("loss", "error"):
        plots.lines(final, "t", metric, ctx.figure(written, metric), by=["path", "split"],
                    title=f"{ctx.ids[0]} -> {ctx.ids[1]}")


def run_plane(ctx: Context) -> None:
    a = ctx.args
    if len(ctx.ckpts) < 3:
        raise SystemExit("plane needs three checkpoints (then any number to project)")
    model = ctx.model(0)
    vectors = [param_vector(model, c["model"]) for c in ctx.ckpts]
    plane = Plane.through(*vectors[:3])
    points = [{"label": i, **dict(zip(("x", "y", "residual"), plane.project(v)))} for i, v in zip(ctx.ids, vectors)]
    xs, ys = grid_axes([(p["x"], p["y"]) for p in points], a.grid, a.margin)
    rows = evaluate_plane(model, plane, xs, ys, ctx.splits(), ctx.batches("train", a.train_images))
    written = ctx.write("plane", rows, grid=a.grid, margin=a.margin)
    ctx.write("plane_points", points, grid=a.grid, margin=a.margin)
    grid, where = pd.DataFrame(rows), pd.DataFrame(points)
    for split in ("train", "test"):
        plots.plane_contour(grid[grid["split"] == split], "loss", where, ctx.figure(written, f"{split}-loss"),
                            f"{split} loss on the plane through\n" + "\n".join(ctx.ids[:3]))
    print(where.to_string(index=False))


def run_sharpness(ctx: Context) -> None:
    a = ctx.args
    rows = []
    for i, ckpt in enumerate(ctx.ckpts):
        model, batches = ctx.model(i), ctx.batches("train", a.train_images)
        update_bn(model, batches)  # stored running stats may be stale (the defaults at iteration 0)
        row = {"epoch": _number(ckpt, "epoch"), "iteration": _number(ckpt, "iteration"),
               "top_eigenvalue": top_eigenvalue(model, batches, a.method, a.iters, seed=a.seed)}
        if a.probes:
            row["trace"], row["trace_stderr"] = hutchinson_trace(model, batches, a.probes, a.seed)
        written = ctx.write("sharpness", [row], [ctx.ids[i]], method=a.method, iters=a.iters, probes=a.probes,
                            images=len(batches))
        rows.append({"ckpt": ctx.ids[i], "trial": ctx.ids[i].split("/")[0], **row})
    df = pd.DataFrame(rows).sort_values(["trial", "iteration"])
    print(df.to_string(index=False))
    plots.lines(df, "iteration", "top_eigenvalue", ctx.figure(written, "vs-iteration"), by=["trial"])


def run_geometry(ctx: Context) -> None:
    a = ctx.args
    if len(ctx.ckpts) < 2:
        raise SystemExit("geometry needs at least two checkpoints")
    model = ctx.model(0)
    n = len(ctx.ckpts)
    pairs = {"all": list(itertools.combinations(range(n), 2)), "consecutive": [(i, i + 1) for i in range(n - 1)],
             "first": [(0, i) for i in range(1, n)]}[a.pairs]
    ts = torch.linspace(0, 1, a.t_points).tolist()
    for i, j in pairs:
        ids = [ctx.ids[i], ctx.ids[j]]
        rows = distances(model, ctx.ckpts[i]["model"], ctx.ckpts[j]["model"])
        ctx.write("geometry", rows, ids)
        print(f"{ids[0]} vs {ids[1]}")
        print(pd.DataFrame(rows).to_string(index=False))
        if a.barrier:
            curve_rows, error_barriers = interpolate(model, ctx.ckpts[i]["model"], ctx.ckpts[j]["model"], ts,
                                                     ctx.splits(), ctx.batches("train", a.train_images))
            written = ctx.write("interpolation", curve_rows, ids)
            ctx.write("error_barrier", [{"split": s, "error_barrier": v} for s, v in error_barriers.items()], ids)
            df = pd.DataFrame(curve_rows).assign(error=lambda d: 1 - d["accuracy"])
            plots.lines(df, "t", "error", ctx.figure(written, "error"), by=["split"], title=" -> ".join(ids))
            print("error barrier:", error_barriers)


def run_swa(ctx: Context) -> None:
    a = ctx.args
    model = swa(ctx.model(0), [c["model"] for c in ctx.ckpts], ctx.batches("train", a.train_images))
    rows = [{"split": name, **evaluate(model, b)} for name, b in ctx.splits().items()]
    written = ctx.write("swa", rows)
    save = Path(a.save) if a.save else ctx.sweep / "derived" / "swa" / f"swa-{written.stem.removeprefix('part-')}.pt"
    checkpoints.save_derived(save, model, ctx.ckpts[0], "swa", averaged=ctx.ids)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"averaged checkpoint: {save}")


def run_frequency(ctx: Context) -> None:
    a = ctx.args
    test = ctx.batches("test", a.test_images)
    frames = []
    for i in range(len(ctx.ckpts)):
        rows = frequency_accuracy(ctx.model(i), test.inputs, test.labels, ctx.data.normalize, a.batch_size,
                                  tuple(a.cutoffs), a.box)
        written = ctx.write("frequency", rows, [ctx.ids[i]], cutoffs=list(a.cutoffs), box=a.box, images=len(test))
        frames.append(pd.DataFrame(rows).assign(ckpt=ctx.ids[i]))
    df = pd.concat(frames)
    print(df.pivot(index="ckpt", columns="variant", values="accuracy").to_string())
    plots.lines(df, "variant", "accuracy", ctx.figure(written, "accuracy"), by=["ckpt"])


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
    p.add_argument("--inputs", type=int, default=2000,
                   help="number of fixed input images (= data points of flat layers; keep it >> their width)")
    p.add_argument("--input-seed", type=int, help="random subset with this seed (default: the first N)")
    p.add_argument("--conv", choices=["positions", "mean"], default="positions")
    p.add_argument("--pool-to", type=int, default=8, help="average-pool conv maps to at most this size when captured")
    p.add_argument("--max-points", type=int, default=20_000)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="float32: faster on a GPU")


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
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--probes", type=int, default=0, help="Hutchinson probes for the Hessian trace (0: skip)")


def _configure_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", choices=["all", "consecutive", "first"], default="all",
                   help="which pairs: all, neighbours in the given order, or the first against each other")
    p.add_argument("--barrier", action="store_true", help="also evaluate the straight segment and its error barrier")
    p.add_argument("--t-points", type=int, default=11)


def _configure_swa(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save", help="where to save the averaged checkpoint (default: <sweep>/derived/swa/)")


def _configure_frequency(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cutoffs", type=float, nargs=2, default=[1 / 3, 2 / 3], metavar=("LOW", "HIGH"),
                   help="band edges in Nyquist units")
    p.add_argument("--box", type=float, default=0.5, help="side of the central box blanked for the background variant")


COMMANDS: dict[str, tuple[Callable[[Context], None], Callable[[argparse.ArgumentParser], None], int | str, str]] = {
    "cca": (run_cca, _configure_cca, 2, "layer x layer CCA/SVCCA/PWCCA/CKA heatmap between two checkpoints"),
    "connect": (run_connect, _configure_connect, 2, "train a mode-connecting curve; loss along curve and segment"),
    "plane": (run_plane, _configure_plane, "+", "loss on the plane through three checkpoints; rest projected"),
    "sharpness": (run_sharpness, _configure_sharpness, "+",
                  "top Hessian eigenvalue (and trace) of the train loss, BN statistics recomputed on its images"),
    "geometry": (run_geometry, _configure_geometry, "+", "distances, angles (net, layer groups), error barriers"),
    "swa": (run_swa, _configure_swa, "+", "average checkpoints, update BN, evaluate, save the average"),
    "frequency": (run_frequency, _configure_frequency, "+", "accuracy on low/mid/high-pass and background test sets"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `analyze` and its sub-commands on a `parser.add_subparsers()` object; each sets func=."""
    analyze = subparsers.add_parser("analyze", help="analyses of saved checkpoints (results as Parquet + PNG)")
    sub = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, (run, configure, count, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        _common(p, count)
        configure(p)
        p.set_defaults(func=_entry(run))
    return analyze


def _entry(run: Callable[[Context], None]) -> Callable[[argparse.Namespace], None]:
    """The sub-command's func: analysis errors (bad inputs, rank-deficient layers) end as one line, not a traceback."""
    def func(args: argparse.Namespace) -> None:
        try:
            run(_context(args))
        except ValueError as err:
            raise SystemExit(f"heurbench analyze {args.analysis}: {err}") from None
    return func
