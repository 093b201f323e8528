"""`edge-trgl detect fit`: fit an abnormal-input detector on a finished run and save it with the run.

The network is the one `edge-trgl export` exports: blocks 0..end of the best module (or --module)
plus that module's head. On the run's validation split: the correctly classified images are the
clean class; the fit attack (FGSM by default) applied to them, where it flips the prediction, is
the abnormal class; a logistic regression on the transport features separates them (detectors.py).
Then, unless --eval-images 0, every kind of abnormal input (the four attacks, noise, another
dataset) is made from a seeded subset of the run's test split, which the detector never saw, and
each detector (the saved one, the norms-only one and the two final-embedding baselines) is
measured on it: AUROC, and detection accuracy at the threshold chosen on the validation split.

Nothing is written until everything has worked; RUN/detector.json is then written atomically (an
existing one is replaced only with --force). It is JSON (detect_runtime.py), never a pickle.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .detectors import Fitted
from .identity import detector_path, model_fingerprint
from .logistic import auroc, balanced_accuracy
from .names import (ATTACKS, DEFAULT_EPS, DEFAULT_EVAL_IMAGES, DEFAULT_FEATURES, DEFAULT_SIGMA,
                    DEFAULT_STEPS, DETECTORS, FEATURE_SETS, KINDS, OOD_SOURCES)
from .sets import FeatureSet, abnormal_set, clean_set, seen
# the Mahalanobis baseline's class statistics come from this many clean training images
MAHALANOBIS_TRAIN_IMAGES = 2000
MIN_FIT_EXAMPLES = 10


def check_options(*, eps, steps, fit_attack, features, kinds, ood, ood_dir, eval_images,
                  sigma, threads) -> None:
    """Every option, before any work (the run takes seconds to load, the attacks minutes)."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps <= 1):
        raise UserError(f"--eps {eps!r} is not valid: the L-infinity budget is in pixel units of "
                        f"[0, 1] images, above 0 and at most 1 (8/255 = 0.0314 is the usual "
                        f"CIFAR budget).")
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be at least 1, not {steps!r}.")
    if fit_attack not in ATTACKS:
        raise UserError(f"--fit-attack {fit_attack!r} is not one of {', '.join(ATTACKS)}.")
    if features != "auto" and features not in FEATURE_SETS:
        raise UserError(f"--features {features!r} is not one of auto, "
                        f"{', '.join(FEATURE_SETS)}.")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UserError(f"--eval {','.join(bad)} names no kind of abnormal input; choose among "
                        f"{', '.join(KINDS)}.")
    if ood not in OOD_SOURCES:
        raise UserError(f"--ood {ood!r} is not one of {', '.join(OOD_SOURCES)}.")
    if ood_dir is not None and not Path(ood_dir).is_dir():
        raise UserError(f"--ood-dir {ood_dir} is not a folder; give the folder of the {ood} "
                        f"files.")
    if not isinstance(eval_images, int) or eval_images < 0:
        raise UserError(f"--eval-images must be 0 (no evaluation) or more, not {eval_images!r}.")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and 0 < sigma <= 1):
        raise UserError(f"--sigma must lie in (0, 1] (pixel units of [0, 1] images), not "
                        f"{sigma!r}.")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}.")


def _subset(arrays, n: int, seed: int):
    if n >= len(arrays.labels):
        return arrays.images, arrays.labels
    pick = np.sort(np.random.default_rng(seed).permutation(len(arrays.labels))[:n])
    return arrays.images[pick], arrays.labels[pick]


def measure(fitted: dict[str, Fitted], clean, abnormal) -> dict:
    """AUROC and detection accuracy (balanced, at each detector's fitted threshold) of every
    detector on one clean set and one abnormal set."""
    out = {}
    for name, det in fitted.items():
        neg, pos = det.scores(clean), det.scores(abnormal)
        out[name] = {"auroc": auroc(neg, pos),
                     "detection_accuracy": balanced_accuracy(neg, pos, det.threshold)}
    return out


def choose_features(clean: FeatureSet, abnormal: FeatureSet, seed: int) -> tuple[str, dict]:
    """The feature set of FEATURE_SETS whose detector separates the validation split's abnormal
    images from its clean ones best on held-out halves (2-fold cross-validated AUROC; ties go to
    the smaller set). The test split plays no part: it measures the choice afterwards."""
    rng = np.random.default_rng(seed + 7)
    folds = [rng.permutation(len(s)) % 2 for s in (clean, abnormal)]
    scores = {}
    for name in FEATURE_SETS:
        aurocs = []
        for k in (0, 1):
            fit_c, fit_a = clean.take(folds[0] != k), abnormal.take(folds[1] != k)
            out_c, out_a = clean.take(folds[0] == k), abnormal.take(folds[1] == k)
            if min(len(fit_c), len(fit_a), len(out_c), len(out_a)) < 2:
                continue
            detector = Fitted(name, fit_c, fit_a)
            aurocs.append(auroc(detector.scores(out_c), detector.scores(out_a)))
        scores[name] = float(np.mean(aurocs)) if aurocs else float("nan")
    size = {n: len(c) for n, c in FEATURE_SETS.items()}
    best = max(FEATURE_SETS, key=lambda n: (np.nan_to_num(scores[n], nan=-1.0), -size[n]))
    return best, scores


def fit_detector(run_dir, *, module=None, data_dir=None, eps=DEFAULT_EPS, steps=DEFAULT_STEPS,
                 fit_attack="fgsm", features=DEFAULT_FEATURES, kinds=KINDS, ood="smooth",
                 ood_dir=None, eval_images=DEFAULT_EVAL_IMAGES, sigma=DEFAULT_SIGMA, seed=0,
                 threads=None, force=False, save=True, log=lambda msg: None) -> dict:
    """Fit, measure and (with `save`) write RUN/detector.json; return its content."""
    kinds = tuple(kinds)
    check_options(eps=eps, steps=steps, fit_attack=fit_attack, features=features, kinds=kinds,
                  ood=ood, ood_dir=ood_dir, eval_images=eval_images, sigma=sigma,
                  threads=threads)
    from ..export import FinishedRun, run_model
    FinishedRun(run_dir)  # a readable error for anything that is not a finished run, first
    target = detector_path(run_dir)
    if save and target.exists() and not force:
        raise UserError(f"{target} already exists; I keep it. Add --force to replace it (the new "
                        f"one is written only once it is complete).")
    import torch
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    torch_model, fin, dataset, k = run_model(run_dir, module, data_dir)
    model = torch_model.model
    lo_hi = fin.blocks_of(k)
    log(f"module {k} (blocks 0-{lo_hi[1] - 1} + head {k}) of the run in {fin.root}")
    val = dataset.val
    if len(val.labels) < 2 * MIN_FIT_EXAMPLES:
        raise UserError(f"The run in {fin.root} has {len(val.labels)} validation images; the "
                        f"detector is fitted on the validation split (images training never "
                        f"saw). Train with --val-fraction 0.1 (the default) or more.")
    clean_v, correct = clean_set(model, val.images, val.labels)
    log(f"validation: {clean_v.info['correct']} of {len(val.labels)} images classified correctly "
        f"(the clean class)")
    adv_v = abnormal_set(model, fit_attack, val.images[correct], val.labels[correct], eps=eps,
                         steps=steps, seed=seed, sigma=sigma, ood=ood, ood_dir=ood_dir,
                         in_shape=dataset.in_shape)
    log(f"{fit_attack} (eps {eps:.4f}): flipped {adv_v.info['kept']} of {adv_v.info['made']} "
        f"(the abnormal class), {adv_v.info['seconds']:.0f} s")
    if min(len(clean_v), len(adv_v)) < MIN_FIT_EXAMPLES:
        raise UserError(f"Too few examples to fit a detector: {len(clean_v)} clean validation "
                        f"images classified correctly and {len(adv_v)} successful {fit_attack} "
                        f"attacks (at least {MIN_FIT_EXAMPLES} of each are needed). Raise --eps, "
                        f"or train the network longer.")
    train_x, train_y = _subset(dataset.train, MAHALANOBIS_TRAIN_IMAGES, seed)
    train_clean = seen(model, "train", train_x)
    fitted = {name: Fitted(name, clean_v, adv_v, train_clean, train_y) for name in DETECTORS}
    selection = None
    if features == "auto":
        features, cv = choose_features(clean_v, adv_v, seed)
        selection = {"rule": "2-fold cross-validated AUROC on the validation split",
                     "cv_auroc": cv, "chosen": features}
        log(f"features: {features} (cross-validated AUROC on the validation split: "
            + ", ".join(f"{n} {v:.3f}" for n, v in cv.items()) + ")")
    chosen = fitted[features]
    report = dict(chosen.spec)
    report.update({
        "features": features, "feature_selection": selection, "feature_sets": {k_: list(v) for k_, v in FEATURE_SETS.items()},
        "raw_columns": list(clean_v.columns),
        "run": {"run_dir": str(fin.root.resolve()), "module": k, "blocks": [0, lo_hi[1]],
                "model": fin.cfg.model, "scheme": fin.cfg.scheme, "tau": _json_float(fin.cfg.tau),
                "e2e_energy": bool(getattr(fin.cfg, "e2e_energy", False)),
                "model_fingerprint": model_fingerprint(fin, k)},
        "fit": {"split": "validation", "attack": fit_attack, "eps": eps,
                "steps": 1 if fit_attack == "fgsm" else steps, "seed": seed,
                "clean": clean_v.info, "abnormal": adv_v.info,
                "thresholds": {n: d.threshold for n, d in fitted.items()},
                "in_sample": measure(fitted, clean_v, adv_v)},
    })
    if eval_images:
        report["evaluation"] = evaluate(model, fitted, dataset, k=k, eval_images=eval_images,
                                        kinds=kinds, eps=eps, steps=steps, seed=seed,
                                        sigma=sigma, ood=ood, ood_dir=ood_dir, log=log)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if save:
        from ..atomic import atomic_write_json
        atomic_write_json(target, report)
        report["saved_to"] = str(target)
    return report


def _json_float(v: float):
    return "inf" if math.isinf(v) else v


def evaluate(model, fitted, dataset, *, k, eval_images, kinds, eps, steps, seed, sigma, ood,
             ood_dir, log) -> dict:
    """Every detector on every kind of abnormal input, made from the run's test split."""
    images, labels = _subset(dataset.test, eval_images, seed + 1)
    clean, correct = clean_set(model, images, labels)
    log(f"test: {clean.info['correct']} of {len(labels)} images classified correctly")
    out = {"split": "test", "clean": clean.info, "kinds": {}}
    for kind in kinds:
        abnormal = abnormal_set(model, kind, images[correct], labels[correct], eps=eps,
                                steps=steps, seed=seed + 2, sigma=sigma, ood=ood,
                                ood_dir=ood_dir, in_shape=dataset.in_shape)
        row = {"seen_in_fit": False, **abnormal.info}
        if len(abnormal) and len(clean):
            row["detectors"] = measure(fitted, clean, abnormal)
        out["kinds"][kind] = row
        best = row.get("detectors", {}).get("transport", {}).get("auroc")
        log(f"  {kind}: {abnormal.info['kept']} abnormal images, transport AUROC "
            f"{'-' if best is None else f'{best:.3f}'} ({abnormal.info['seconds']:.0f} s)")
    return out


def format_report(report: dict) -> str:
    """The text `edge-trgl detect fit` prints: what was fitted, and the evaluation table."""
    fit = report["fit"]
    lines = [f"detector ({report['features']} features, {len(report['columns'])} columns) for "
             f"module {report['run']['module']} of {report['run']['run_dir']}",
             f"  fitted on the validation split: {fit['clean']['correct']} clean images vs "
             f"{fit['abnormal']['kept']} {fit['attack']} attacks (eps {fit['eps']:.4f}), threshold "
             f"{report['threshold']:.3f}"]
    ev = report.get("evaluation")
    if ev:
        names = list(DETECTORS)
        lines.append(f"  test split ({ev['clean']['correct']} clean images): AUROC / detection "
                     f"accuracy")
        lines.append("  " + f"{'kind':<11}{'kept':>6}  " + "".join(f"{n:>17}" for n in names))
        for kind, row in ev["kinds"].items():
            cells = []
            for n in names:
                d = row.get("detectors", {}).get(n)
                cells.append(f"{d['auroc']:.3f} / {d['detection_accuracy']:.3f}" if d else "-")
            mark = " (fit)" if kind == fit["attack"] else ""
            lines.append("  " + f"{kind + mark:<11}{row['kept']:>6}  "
                         + "".join(f"{c:>17}" for c in cells))
    if report.get("saved_to"):
        lines.append(f"saved to {report['saved_to']}")
    return "\n".join(lines)
