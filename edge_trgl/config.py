"""Typed run configuration. The CLI fills a TrainConfig from its options; library users build one
directly. `validate()` turns every bad value into a UserError before anything touches the disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from .errors import UserError

SCHEMES = ("sequential", "multilap", "parallel", "e2e")
TAU_MODES = ("varying", "constant", "adaptive")
OPTIMIZERS = ("sgd", "adamw")
BACKENDS = ("torch", "ort")
DEVICES = ("cpu", "cuda")
AUG_POLICIES = ("views", "training", "none")
LR_SCHEDULES = ("constant", "cosine", "step")

# Fields added after run directories were already being written, each with the value that does
# what those runs did: a config.json without one is read with that value, and the field joins
# the identity hash only when it differs from it, so the older runs keep resuming.
LATER_FIELDS = {"lr_schedule": "constant", "warmup_epochs": 0.0, "checkpoint_segments": None,
                "image_size": None, "test_modules": "all", "distributed": False,
                "wire_dtype": "fp32", "dist_timeout_s": 300.0, "compile": False}
TEST_MODULES = ("best", "all")  # final_test.py
# --image-size: the datasets whose loader resizes images (the others have a fixed size)
RESIZABLE_DATA = ("folder",)
IMAGE_SIZE_RANGE = (8, 512)  # pixels; every image is held in memory at this size


class Unchosen(str):
    """A default nobody chose: equal to (and saved as) its text, but a --profile may replace it.
    TrainConfig's backend and device default to one; a value the user gives (the CLI's --backend,
    `TrainConfig(backend=...)`, a config read back from JSON) is a plain str and is kept."""
    __slots__ = ()


def chosen(value) -> bool:
    """Whether a backend / device value was given by the user (not TrainConfig's default)."""
    return not isinstance(value, Unchosen)


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"
    data_dir: str | None = None
    train_fraction: float = 1.0
    val_fraction: float = 0.1
    test_fraction: float = 1.0
    synthetic_train: int = 4000
    synthetic_test: int = 1000
    image_size: int | None = None    # folder: side of the square images; None: the median rule
    # model
    model: str = "resnet20"
    width: float = 1.0
    head: str = "conv"
    # grouping of blocks into modules: exactly one of these, or none (then `modules`=4 or the plan)
    module_size: int | None = None
    modules: int | None = None
    splits: list[int] | None = None  # block indices where modules 1..K-1 start
    # method
    scheme: str = "sequential"
    tau: float = 1.0
    tau_mode: str = "varying"
    e2e_energy: bool = False        # end-to-end with the kinetic regulariser on all blocks
    checkpoint_segments: int | None = None  # e2e: activation checkpointing in N segments; 0: auto
    laps: int = 5                    # multilap only
    epochs: int = 3                  # module k gets epochs + epochs_growth * k (authors: 50 + 10k)
    epochs_growth: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    # Chosen on validation accuracy (benchmarks/results/recipe/: ResNet-20, CIFAR-10 10 %, 8 epochs;
    # cosine with a warm-up epoch at lr 0.05 beat constant 0.05 and cosine 0.1, both for e2e and K=4)
    lr_schedule: str = "cosine"      # over each module's epochs (sequential), across laps
                                     # (multilap), over the whole run (e2e, parallel)
    warmup_epochs: float | None = None  # linear warm-up; None: 1 epoch where a span has more
    momentum: float = 0.9
    weight_decay: float = 2e-4
    label_smoothing: float = 0.1
    augment: bool = True
    aug_policy: str = "views"        # later modules' augmented views: an eval pass, from training (harvest.py), or none
    test_modules: str = "best"       # the heads scored on the test set: the chosen and last module, or all (final_test.py)
    aug_views: int | None = None     # None: the planner picks
    cache_dtype: str = "fp16"
    seed: int = 0
    threads: int | None = None
    # where and how
    backend: str = Unchosen("torch")  # a --profile's backend / device replaces these defaults,
    device: str = Unchosen("cpu")     # not a value the user gave (profile_target.py)
    amp: str | None = None           # None, "fp16", "bf16" (CUDA)
    compile: bool = False            # torch.compile the training step's forward (compiled.py)
    mem_budget: str | None = None
    disk_budget: str | None = None
    profile: str | None = None
    out: str | None = None
    keep_cache: bool = False
    # several ranks (distributed.py / pipeline.py): the parallel scheme on torch.distributed
    distributed: bool = False
    wire_dtype: str = "fp32"         # features between ranks: fp32 (bit-identical) or fp16
    dist_timeout_s: float = 300.0    # how long a rank waits for a peer before it gives up
    module_peaks: bool = False       # reset VmHWM per module for exact per-module peaks (schemes.py)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        def bad(msg: str):
            raise UserError(msg)

        if self.scheme not in SCHEMES:
            bad(f"Unknown --scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}.")
        if self.tau_mode not in TAU_MODES:
            bad(f"Unknown --tau-mode {self.tau_mode!r}; choose one of {', '.join(TAU_MODES)}.")
        if self.optimizer not in OPTIMIZERS:
            bad(f"Unknown --optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if self.backend not in BACKENDS:
            bad(f"Unknown --backend {self.backend!r}; choose one of {', '.join(BACKENDS)}.")
        if self.device not in DEVICES:
            bad(f"Unknown --device {self.device!r}; choose one of {', '.join(DEVICES)}.")
        if self.aug_policy not in AUG_POLICIES:
            bad(f"Unknown --aug-policy {self.aug_policy!r}; choose one of {', '.join(AUG_POLICIES)}.")
        if self.test_modules not in TEST_MODULES:
            bad(f"Unknown --test-modules {self.test_modules!r}; choose one of "
                f"{', '.join(TEST_MODULES)}.")
        if self.cache_dtype not in ("fp16", "fp32"):
            bad(f"--cache-dtype must be fp16 or fp32, not {self.cache_dtype!r}.")
        if self.amp not in (None, "fp16", "bf16"):
            bad(f"--amp must be fp16 or bf16, not {self.amp!r}.")
        if not (self.tau > 0 or math.isinf(self.tau)) or math.isnan(self.tau):
            bad(f"--tau must be a positive number or 'inf' (plain greedy), not {self.tau}.")
        if self.batch_size < 2:
            bad(f"--batch-size must be at least 2 (BatchNorm cannot normalise a batch of one "
                f"sample), not {self.batch_size}.")
        for name in ("epochs", "laps"):
            if getattr(self, name) < 1:
                bad(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.epochs_growth < 0:
            bad("--epochs-growth must be zero or positive.")
        if not self.lr > 0:
            bad(f"--lr must be positive, not {self.lr}.")
        if self.lr_schedule not in LR_SCHEDULES:
            bad(f"Unknown --lr-schedule {self.lr_schedule!r}; choose one of "
                f"{', '.join(LR_SCHEDULES)}.")
        if self.warmup_epochs is not None and not (0 <= self.warmup_epochs < self.epochs):
            bad(f"--warmup-epochs must be at least 0 and less than --epochs ({self.epochs}), not "
                f"{self.warmup_epochs}.")
        if self.width <= 0:
            bad(f"--width must be positive, not {self.width}.")
        if self.threads is not None and self.threads < 1:
            bad(f"--threads must be at least 1, not {self.threads}.")
        if self.aug_views is not None and self.aug_views < 1:
            bad(f"--aug-views must be at least 1, not {self.aug_views}.")
        if self.checkpoint_segments is not None:
            if self.scheme != "e2e":
                bad(f"--checkpoint-segments is gradient checkpointing for --scheme e2e (the "
                    f"other schemes keep one module's activations at a time already); leave it "
                    f"out with --scheme {self.scheme}.")
            if self.checkpoint_segments < 0 or isinstance(self.checkpoint_segments, bool):
                bad(f"--checkpoint-segments must be a number of segments (at least 1) or 'auto', "
                    f"not {self.checkpoint_segments}.")
        self._validate_data()
        from .compiled import check_compile_options
        check_compile_options(self)
        from .distributed import check_options
        check_options(self)
        given = [n for n in ("module_size", "modules", "splits") if getattr(self, n) is not None]
        if len(given) > 1:
            bad(f"Give only one of --module-size, --modules and --splits (got {', '.join(given)}).")
        if self.module_size is not None and self.module_size < 1:
            bad(f"--module-size must be at least 1 block, not {self.module_size}.")
        if self.modules is not None and self.modules < 1:
            bad(f"--modules must be at least 1, not {self.modules}.")
        return self

    def _validate_data(self) -> None:
        data = str(self.data).lower()
        if data == "folder" and not self.data_dir:
            raise UserError("--data folder trains on your own images: give --data-dir DIR, the "
                            "folder that holds one sub-folder per class (DIR/cat/*.jpg, "
                            "DIR/dog/*.png, ...) or train/ and test/ folders of such class "
                            "folders.")
        size = self.image_size
        if size is None:
            return
        if data not in RESIZABLE_DATA:
            raise UserError(f"--image-size resizes the images of --data "
                            f"{' / '.join(RESIZABLE_DATA)}; the {self.data} dataset has images "
                            f"of a fixed size. Leave --image-size out.")
        lo, hi = IMAGE_SIZE_RANGE
        if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
            raise UserError(f"--image-size must be a whole number of pixels from {lo} to {hi}, "
                            f"not {size!r} (every image is held in memory at that size: 64 "
                            f"takes 12 KB an image).")

    def thread_count(self) -> int:
        """--threads, or every core of this machine: what torch, ONNX Runtime and the probes use."""
        return int(self.threads or os.cpu_count() or 1)

    def module_epochs(self, k: int) -> int:
        return self.epochs + self.epochs_growth * k

    def lap_epochs(self, k: int) -> int:
        """Module k's epochs in one visit: all of them, or one lap's share (multilap)."""
        if self.scheme != "multilap":
            return self.module_epochs(k)
        return max(1, round(self.module_epochs(k) / self.laps))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"The run config has unknown keys {unknown}; it was written by another "
                            f"version of edge-trgl. Start a new run.")
        return cls(**{**{k: v for k, v in LATER_FIELDS.items() if k not in d}, **d})

    def identity_hash(self) -> str:
        """Hash of what determines the training result; --resume refuses if it changed. Options
        that only affect display or where files go are left out."""
        d = self.to_json()
        # (test_modules decides which heads see the test set, not what training does)
        for k in ("out", "progress", "keep_cache", "threads", "module_peaks", "test_modules",
                  "dist_timeout_s"):
            d.pop(k, None)
        for k, earlier in LATER_FIELDS.items():
            if d.get(k) == earlier:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
