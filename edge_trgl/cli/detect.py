"""`edge-trgl detect fit|score`: flag abnormal and adversarial inputs from the network's transport
dynamics (the displacement each residual block adds). The work is in edge_trgl/detect/."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "flag abnormal / adversarial inputs from the network's transport dynamics"


def _eps(text: str) -> float:
    """8/255 or 0.0314."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 8/255 or 0.03, got {text!r}")


def add_parser(sub) -> None:
    from ..detect.names import (ATTACKS, DEFAULT_EVAL_IMAGES, DEFAULT_FEATURES, DEFAULT_SIGMA,
                                DEFAULT_STEPS, FEATURE_SETS, KINDS, OOD_SOURCES)
    p = sub.add_parser("detect", help=HELP, allow_abbrev=False, description=HELP + ". `fit` "
                       "trains a detector on a finished run (attacks on its validation split) "
                       "and saves it as RUN_DIR/detector.json; `score` scores inputs. Export with "
                       "`edge-trgl export RUN_DIR --detect` to score on the device.")
    actions = p.add_subparsers(dest="detect_command", metavar="ACTION")
    f = actions.add_parser(
        "fit", allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="fit a detector on a finished run and save it with the run",
        description="Fit a logistic-regression detector on the run's validation split: the "
        "correctly classified images against their --fit-attack versions, seen through each "
        "block's displacement norm (and block input norms and successive-displacement cosines "
        "with --features transport). Then measure it, and the final-embedding baselines, on the "
        "test split against every --eval kind (AUROC, detection accuracy).")
    f.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a finished run")
    f.add_argument("--module", type=int, metavar="K", help="the network cut after module K "
                   "(default: the best module, as export chooses)")
    f.add_argument("--eps", type=_eps, default=8 / 255, metavar="E", help="L-infinity budget of "
                   "the attacks in pixel units of [0, 1] images, e.g. 8/255 (default 8/255)")
    f.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of the iterative "
                   "attacks (bim, pgd, cw)")
    f.add_argument("--fit-attack", choices=ATTACKS, default="fgsm",
                   help="the attack the detector is fitted on")
    f.add_argument("--features", choices=("auto", *FEATURE_SETS), default=DEFAULT_FEATURES,
                   help="norms: the displacement norms only; transport: also each block's input "
                   "norm and the cosine between successive displacements; field: also each "
                   "displacement averaged over space, per channel; auto (default): the one of "
                   "these with the best 2-fold cross-validated AUROC on the validation split "
                   "(the test split is never used to choose)")
    f.add_argument("--eval", default=",".join(KINDS), metavar="KINDS",
                   help=f"kinds of abnormal input to measure on the test split ({', '.join(KINDS)})")
    f.add_argument("--eval-images", type=int, default=DEFAULT_EVAL_IMAGES, metavar="N",
                   help="test images to measure on (0: fit only)")
    f.add_argument("--ood", choices=OOD_SOURCES, default="smooth", help="out-of-distribution "
                   "source: another dataset (with --ood-dir) or generated smooth colour fields")
    f.add_argument("--ood-dir", metavar="DIR", help="folder of the --ood dataset's files")
    f.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="std of the gauss noise, in "
                   "pixel units of [0, 1]")
    f.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts, the "
                   "noise and the subsets")
    f.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is now, if it moved")
    f.add_argument("--threads", type=int, metavar="N", help="torch threads (default: all cores)")
    f.add_argument("--force", action="store_true", help="replace an existing RUN_DIR/detector.json")
    f.add_argument("--json", action="store_true", help="print the saved detector as JSON")
    f.set_defaults(func=run_fit)
    s = actions.add_parser(
        "score", allow_abbrev=False, help="score inputs with a fitted detector",
        description="Print each input's predicted class and abnormal score (the detector's "
        "probability that it is abnormal), FLAGGED at or above the detector's threshold.")
    s.add_argument("model", metavar="RUN_DIR|EXPORT", help="a run directory with a detector, or "
                   "an export folder / model.onnx made with `edge-trgl export --detect`")
    s.add_argument("--images", nargs="+", required=True, metavar="FILE", help="PNG/JPEG files, "
                   ".npy images or .npy batches (N, C, H, W) of pixel values 0..255")
    s.add_argument("--module", type=int, metavar="K", help=argparse.SUPPRESS)
    s.add_argument("--data-dir", metavar="DIR", help="run directory: where its dataset is now")
    s.add_argument("--threads", type=int, metavar="N", help="threads (default: all cores)")
    s.add_argument("--json", action="store_true", help="print the scores as JSON")
    s.set_defaults(func=run_score)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_fit(args) -> int:
    from ..detect.fit import fit_detector, format_report
    kinds = tuple(k.strip() for k in args.eval.split(",") if k.strip())
    report = fit_detector(args.run_dir, module=args.module, data_dir=args.data_dir, eps=args.eps,
                          steps=args.steps, fit_attack=args.fit_attack, features=args.features,
                          kinds=kinds, ood=args.ood, ood_dir=args.ood_dir,
                          eval_images=args.eval_images, sigma=args.sigma, seed=args.seed,
                          threads=args.threads, force=args.force,
                          log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_score(args) -> int:
    from ..detect.score import format_scores, score_inputs
    results = score_inputs(args.model, args.images, module=args.module, data_dir=args.data_dir,
                           threads=args.threads)
    print(json.dumps(results, indent=2) if args.json else format_scores(results))
    return 0
