"""Options shared by the subcommands that describe a run (train, plan, bench)."""

from __future__ import annotations

import argparse
import math

from ..budget import HELP as SIZE_HELP
from ..config import (AUG_POLICIES, BACKENDS, DEVICES, OPTIMIZERS, SCHEMES, TAU_MODES,
                      TrainConfig)


def _tau(text: str) -> float:
    if text.strip().lower() in ("inf", "infinity", "none"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'inf', got {text!r}")


def _splits(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated block indices, got {text!r}")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=d.data, help="synthetic (built-in, default), cifar10 or mnist")
    g.add_argument("--data-dir", help="directory of the dataset files (CIFAR-10 python batches, "
                   "or MNIST IDX files)")
    g.add_argument("--train-fraction", type=float, default=d.train_fraction,
                   help="seeded class-balanced fraction of the train set to use (default 1.0)")
    g.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="fraction of the (sub)set held out for validation (default 0.1)")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="seeded class-balanced fraction of the test set to evaluate on (default 1.0)")
    g.add_argument("--synthetic-train", type=int, default=d.synthetic_train,
                   help="train images of the synthetic dataset")
    g.add_argument("--synthetic-test", type=int, default=d.synthetic_test,
                   help="test images of the synthetic dataset")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="resnet20/32/44/56/110 (any resnetN, N=6n+2), "
                   "vgg8/vgg11/..., vit or vitN (default resnet20)")
    g.add_argument("--width", type=float, default=d.width, help="channel width multiplier")
    g.add_argument("--head", default=d.head, help="auxiliary head: conv (default), linear, mlp")
    g = parser.add_argument_group("modules (give at most one; with --mem-budget the planner chooses)")
    g.add_argument("--module-size", type=int, help="blocks per module")
    g.add_argument("--modules", "-K", type=int, help="number of modules K (default 4)")
    g.add_argument("--splits", type=_splits, help="block indices where modules 1..K-1 start, e.g. 3,6")
    g = parser.add_argument_group("method")
    g.add_argument("--scheme", default=d.scheme, choices=SCHEMES, help="training scheme")
    g.add_argument("--tau", type=_tau, default=d.tau, help="TRGL tau (energy weight 1/(2 tau)); "
                   "'inf' = plain greedy (default 1)")
    g.add_argument("--tau-mode", default=d.tau_mode, choices=TAU_MODES,
                   help="varying: tau/2 for the first half of the modules (default)")
    g.add_argument("--e2e-energy", action="store_true", help="e2e: add the kinetic energy of all blocks")
    g.add_argument("--laps", type=int, default=d.laps, help="multilap: number of laps")
    g.add_argument("--epochs", type=int, default=d.epochs, help="epochs per module (default 3)")
    g.add_argument("--epochs-growth", type=int, default=d.epochs_growth,
                   help="module k trains epochs + growth*k epochs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="requested batch size")
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate (default 0.05)")
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no crop/flip augmentation")
    g.add_argument("--aug-policy", default=d.aug_policy, choices=AUG_POLICIES,
                   help="views: cache augmented views for later modules; none: no augmentation "
                   "after module 0")
    g.add_argument("--aug-views", type=int, help="augmented train views to cache (default: planner)")
    g.add_argument("--cache-dtype", default=d.cache_dtype, choices=("fp16", "fp32"))
    g.add_argument("--seed", type=int, default=d.seed)
    g = parser.add_argument_group("resources")
    g.add_argument("--backend", default=d.backend, choices=BACKENDS)
    g.add_argument("--device", default=d.device, choices=DEVICES)
    g.add_argument("--amp", choices=("fp16", "bf16"), help="mixed precision (CUDA)")
    g.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    g.add_argument("--mem-budget", help=f"peak memory budget, e.g. 512MB; {SIZE_HELP}")
    g.add_argument("--disk-budget", help="disk budget for the feature cache (default: free space)")
    g.add_argument("--profile", help="device profile name from profiles/ (sets budget and defaults)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Every option whose name is a TrainConfig field; the rest keep the dataclass defaults."""
    return TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__
                          if hasattr(args, name)})

