"""Options shared by the subcommands that describe a run (train, plan, bench)."""

from __future__ import annotations

import argparse
import math

from ..budget import HELP as SIZE_HELP
from ..config import (AUG_POLICIES, BACKENDS, DEVICES, LR_SCHEDULES, OPTIMIZERS, SCHEMES, TAU_MODES,
                      TrainConfig)


def _tau(text: str) -> float:
    if text.strip().lower() in ("inf", "infinity", "none"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'inf', got {text!r}")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse.ArgumentDefaultsHelpFormatter, but true and said once: no "(default: None)", no
    default for on/off flags (--quiet's stored default is True, which is not what --quiet does),
    and nothing added to a help text that already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, [], ""):
            return text  # flags (store_true/false/const, count, help, version) and no default
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL,
                                                             argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def honest_defaults(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and its subcommands' parsers DefaultsHelpFormatter wherever they used
    argparse's ArgumentDefaultsHelpFormatter (which repeats defaults a help text states and shows
    a store_false flag's stored True as its default)."""
    stack = [parser]
    while stack:
        p = stack.pop()
        formatter = p.formatter_class
        stock = argparse.ArgumentDefaultsHelpFormatter
        if isinstance(formatter, type) and issubclass(formatter, stock):
            # keep what else the formatter does (e.g. RawDescriptionHelpFormatter's layout)
            bases = tuple(b for b in formatter.__mro__[1:]
                          if b not in (stock, argparse.HelpFormatter, object)
                          and issubclass(b, argparse.HelpFormatter))
            p.formatter_class = (type("DefaultsHelpFormatter", (DefaultsHelpFormatter, *bases), {})
                                 if bases else DefaultsHelpFormatter)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())


def _segments(text: str) -> int:
    """--checkpoint-segments: a positive number, or auto (stored as 0: chosen from the depth)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of segments or 'auto', got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 segment (or 'auto'), got {value}")
    return value


def _splits(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got {text!r}")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a run. Defaults are shown by DefaultsHelpFormatter, which this
    sets on `parser` (a help text that states its own default is left as it is)."""
    if not (isinstance(parser.formatter_class, type)
            and issubclass(parser.formatter_class, DefaultsHelpFormatter)):
        parser.formatter_class = DefaultsHelpFormatter
    d = TrainConfig()
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=d.data, metavar="NAME",
                   help="dataset: synthetic (built-in), cifar10, mnist, or folder (your own "
                   "images: one sub-folder per class, see --data-dir)")
    g.add_argument("--data-dir", metavar="DIR", help="directory of the dataset files (CIFAR-10 "
                   "python batches, or MNIST IDX files); --data folder: DIR/<class>/* (20%% of "
                   "each class, seeded, becomes the test set) or DIR/train/<class>/* and "
                   "DIR/test/<class>/*, JPEG/PNG/WebP/BMP, loaded into memory as RGB")
    g.add_argument("--image-size", type=int, metavar="N",
                   help="--data folder: resize each image's shorter side to N pixels and "
                   "centre-crop N x N (default: the median shorter side of the (training) images, "
                   "rounded to a multiple of 8, at most 64)")
    g.add_argument("--train-fraction", type=float, default=d.train_fraction, metavar="F",
                   help="seeded class-balanced fraction of the train set to use")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction, metavar="F",
                   help="fraction of the (sub)set held out for validation")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction, metavar="F",
                   help="seeded class-balanced fraction of the test set to evaluate on")
    g.add_argument("--synthetic-train", type=int, default=d.synthetic_train, metavar="N",
                   help="train images of the synthetic dataset")
    g.add_argument("--synthetic-test", type=int, default=d.synthetic_test, metavar="N",
                   help="test images of the synthetic dataset")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="resnet20/32/44/56/110 (any resnetN, N=6n+2), "
                   "vgg8/vgg11/..., vit or vitN")
    g.add_argument("--width", type=float, default=d.width, help="channel width multiplier")
    g.add_argument("--head", default=d.head, help="auxiliary head: conv, pooled-conv, strided-conv, linear or mlp")
    g = parser.add_argument_group("modules (give at most one; with --mem-budget the planner chooses)")
    g.add_argument("--module-size", type=int, metavar="N", help="blocks per module")
    g.add_argument("--modules", "-K", type=int, metavar="K",
                   help="number of modules K (default 4, or the planner's choice)")
    g.add_argument("--splits", type=_splits, metavar="I,J,...",
                   help="block indices where modules 1..K-1 start, e.g. 3,6")
    g = parser.add_argument_group("method")
    g.add_argument("--scheme", default=d.scheme, choices=SCHEMES, help="training scheme")
    g.add_argument("--tau", type=_tau, default=d.tau, help="TRGL tau (energy weight 1/(2 tau)); "
                   "'inf' = plain greedy")
    g.add_argument("--tau-mode", default=d.tau_mode, choices=TAU_MODES,
                   help="varying: tau/2 for the first half of the modules; constant: tau for all; "
                   "adaptive: the authors' 1/l_k weight")
    g.add_argument("--e2e-energy", action="store_true", help="e2e: add the kinetic energy of all blocks")
    g.add_argument("--checkpoint-segments", type=_segments, metavar="N|auto",
                   help="e2e only: gradient (activation) checkpointing in N segments of blocks, "
                   "recomputed in the backward pass: less memory, ~1/3 more compute; auto = "
                   "ceil(2*sqrt(blocks)); the planner probes its real peak like any scheme's")
    g.add_argument("--laps", type=int, default=d.laps, metavar="N", help="multilap: number of laps")
    g.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help="epochs per module")
    g.add_argument("--epochs-growth", type=int, default=d.epochs_growth, metavar="N",
                   help="module k trains epochs + growth*k epochs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help="requested batch size (with --mem-budget, the most the planner may use)")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="optimizer")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (the peak of a schedule)")
    g.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="learning rate over training: constant; cosine (to 0 at the end); step "
                   "(x0.1 at 50%% and 75%%). Over each module's epochs with --scheme sequential, "
                   "across all laps with multilap, over the whole run with e2e and parallel")
    g.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="E",
                   help="linear warm-up over the first E epochs of the schedule's span (default: "
                   "1 where the span has more than one epoch, else 0)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="WD",
                   help="weight decay")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="EPS",
                   help="label smoothing of the cross-entropy loss")
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no crop/flip augmentation (augmentation is on without this flag)")
    g.add_argument("--aug-policy", default=d.aug_policy, choices=AUG_POLICIES,
                   help="views (default): an eval-mode pass of each trained module over V "
                   "augmented views of the train set makes the next module's inputs; training: "
                   "the module's outputs in its last epochs of training are (up to V views, none "
                   "from the first half of its epochs; BatchNorm statistics held then; a module "
                   "trained fewer than 4 epochs uses the eval pass): no extra pass, faster, ~2 "
                   "points lower validation accuracy in the recipe suite (torch targets; ORT "
                   "always uses views); none: no augmentation after module 0")
    g.add_argument("--test-modules", default=d.test_modules, choices=("best", "all"),
                   help="best (default): module-wise runs score the test set once, after "
                   "training, on the module chosen on validation and on the last one (no test "
                   "features cached between modules); all: every module's head, as each "
                   "finishes (per-module test curves; always so with --backend ort or without "
                   "a validation split)")
    g.add_argument("--aug-views", type=int, metavar="V",
                   help="augmented train views to cache for later modules (default: one "
                   "per 8 epochs of a module's training, 2 to 16, within half the free disk)")
    g.add_argument("--cache-dtype", default=d.cache_dtype, choices=("fp16", "fp32"),
                   help="number format of the feature cache on disk")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (data subsets, "
                   "initial weights, augmentation)")
    g = parser.add_argument_group("resources")
    g.add_argument("--backend", default=d.backend, choices=BACKENDS,
                   help="torch (PyTorch) or ort (ONNX Runtime training, no torch while training)")
    g.add_argument("--device", default=d.device, choices=DEVICES, help="where to train")
    g.add_argument("--amp", choices=("fp16", "bf16"), help="mixed precision (--device cuda only)")
    g.add_argument("--threads", type=int, metavar="N", help="torch threads (default: all cores)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's forward pass (inductor; needs a C "
                   "compiler): ResNet-56 warm epochs measured 0.81x the eager time at K=4, "
                   "0.87x end-to-end, 0.97x block-wise, after about 150 s of compiling a run, "
                   "so it pays on long runs only. Not with --mem-budget / --profile (the "
                   "compiler's memory is not planned) or --backend ort. The first compiled run "
                   "on a machine checks in a child (1-2 min, then cached) that the generated "
                   "code runs here, and refuses where it crashes")
    g.add_argument("--mem-budget", metavar="SIZE",
                   help=f"peak memory budget, e.g. 512MB; {SIZE_HELP}")
    g.add_argument("--disk-budget", metavar="SIZE", help="disk budget for the feature cache, e.g. "
                   "2GB (default: the free space)")
    g.add_argument("--profile", metavar="NAME", help="device profile name from profiles/ (sets "
                   "budget, threads and defaults)")
    g = parser.add_argument_group("several ranks (README: 'Several boards')")
    g.add_argument("--distributed", action="store_true",
                   help="--scheme parallel across the ranks of a torch.distributed job (gloo over "
                   "TCP; launch with torchrun or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): "
                   "rank r trains a compute-balanced share of the modules on the features rank "
                   "r-1 streams to it, in --out/rank<r>, within its own --mem-budget")
    g.add_argument("--wire-dtype", default=d.wire_dtype, choices=("fp32", "fp16"),
                   help="features between ranks: fp32 trains exactly what one process trains; "
                   "fp16 halves the bytes on the link")
    g.add_argument("--dist-timeout", dest="dist_timeout_s", type=float, default=d.dist_timeout_s,
                   metavar="SECONDS", help="how long a rank waits for its peers (at start-up and "
                   "for every batch) before it stops with an error instead of hanging")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Every option whose name is a TrainConfig field; the rest keep the dataclass defaults."""
    return TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__
                          if hasattr(args, name)})

