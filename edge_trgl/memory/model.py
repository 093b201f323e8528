"""A target's memory model: what the planner (budgeted.py) asks about the memory of training on
one target. The planner takes one as an argument and never asks which target it is; each target
(targets/cpu.py, cuda.py, ort.py) hands it its own.

This base class is the torch trainer on the CPU (targets/cpu.py uses it as it is): every figure is
a measurement of a torch child process (estimate.py's probes), the command's baseline is the
torch-free orchestrator + a torch trainer process after its imports + the dataset, and what a
real training loop holds beyond a probe is LOOP_ALLOWANCE_BYTES or 15 % of the module.
torch-free, like everything the planner imports."""

from __future__ import annotations


class MemoryModel:
    name = "cpu"
    # how the refusal message describes the framework's own share of the budget
    framework_what = "after `import torch`"
    # what the refusal suggests beyond a larger budget
    smaller_framework_hint = "use --backend ort (a torch-free trainer), "

    # --- measurements -----------------------------------------------------------------------------
    def probe_module(self, cfg, in_shape, num_classes, arch, lo, hi, batches,
                     threads) -> dict[int, int]:
        """Measured peak bytes of training blocks lo..hi-1 + head at each batch size, above the
        trainer's own baseline (a child process that trains a few steps)."""
        from .estimate import probe_module
        return probe_module(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)

    def saved_bytes(self, cfg, in_shape, num_classes, arch, lo, hi, batches, threads) -> int:
        """Bytes per sample that stay alive through a training step of blocks lo..hi-1."""
        from .estimate import probe_saved_bytes
        return probe_saved_bytes(cfg, in_shape, num_classes, arch, lo, hi, batches, threads)

    def loop_allowance_bytes(self, cfg, module_bytes: float) -> int:
        """What the real training loop holds beyond a probe of a module costing `module_bytes`."""
        from .estimate import LOOP_ALLOWANCE_BYTES, LOOP_ALLOWANCE_FRACTION
        return int(max(LOOP_ALLOWANCE_BYTES, LOOP_ALLOWANCE_FRACTION * module_bytes))

    def framework_bytes(self, cfg, dataset, description=None) -> int:
        """What a budgeted run holds before any module trains: the torch-free orchestrator + a
        torch trainer process after its imports + the dataset arrays that trainer loads, all
        measured in fresh processes. Without a `description` (an in-process caller: tests) this
        process is taken to be the trainer."""
        from .budgeted import dataset_array_bytes
        if description is None:
            from .measure import rss_bytes
            return rss_bytes()
        from .describe import orchestrator_bytes
        return (orchestrator_bytes(cfg.thread_count()) + description["trainer_baseline_bytes"]
                + dataset_array_bytes(dataset))

    def limits_children(self, description) -> bool:
        """Whether probes run beside the orchestrator with the budget less it as their share."""
        return description is not None

    def later_module_image_bytes(self, cfg, dataset) -> int:
        """Image bytes the trainer of a module after the first does not hold (0: the torch
        trainer keeps the dataset for the whole run)."""
        return 0

    # --- words ---------------------------------------------------------------------------------
    def check_framework(self, cfg, budget_bytes: int, usable_bytes: int, framework_bytes: int) -> None:
        """Refuse (UserError) when the framework alone leaves nothing of the budget."""
        if usable_bytes > framework_bytes:
            return
        from ..budget import format_size
        from ..errors import UserError
        from .budgeted import SAFETY
        raise UserError(
            f"The memory budget {format_size(budget_bytes)} is smaller than what the framework "
            f"alone holds before training anything: {format_size(framework_bytes)} (this command's "
            f"torch-free process, a torch trainer process after `import torch`, and the "
            f"dataset's arrays). Give at least {format_size(framework_bytes / SAFETY)} plus the model "
            f"with --mem-budget, or use --backend ort, whose torch-free trainer starts at about "
            f"70 MB. Nothing was written.")

    def plan_note(self, cfg, dataset, description) -> str | None:
        if description is None:
            return None
        from ..budget import format_size
        from .budgeted import dataset_array_bytes
        from .describe import orchestrator_bytes
        return (f"baseline = this command's torch-free process "
                f"{format_size(orchestrator_bytes(cfg.thread_count()))} + a torch trainer process "
                f"after its imports {format_size(description['trainer_baseline_bytes'])} + the "
                f"dataset's labels {format_size(dataset_array_bytes(dataset))} (the images are "
                f"streamed from the run's copy on disk); the two processes are alive "
                f"together (probes run one at a time, each as the only child)")

    # --- budgets -------------------------------------------------------------------------------
    def profile_budget(self, cfg) -> tuple[int, list[str]]:
        """The budget a --profile gives on this target, with a note saying where it came from."""
        from ..budget import format_size
        from ..profiles import load_profile
        profile = load_profile(cfg.profile)
        return profile["budget_bytes"], [
            f"budget from profile {profile['name']}: {format_size(profile['budget_bytes'])} "
            f"({format_size(profile['ram_bytes'])} RAM minus "
            f"{format_size(profile['os_reserve_bytes'])} for the OS)"]

    def accounting(self, cfg, dataset, arch, threads: int, framework_bytes: int):
        """A target whose budget is not host RSS (CUDA) plans through an accounting object
        (memory/cuda.py's PlanAccounting); None: the planner's host-RSS rules."""
        return None
