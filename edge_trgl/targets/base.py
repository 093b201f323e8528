"""What a target provides (targets/cpu.py, cuda.py and ort.py are the three there are).

- `check_available(cfg, setup=...)`: a clear UserError, before anything is loaded or written,
  when this machine cannot train on it (no GPU, no ONNX Runtime training build, ...);
- `validate(cfg)`: its configuration rules (what TrainConfig.validate cannot know);
- `memory_model()`: what the planner asks about memory (memory/model.py);
- `host_limit(budget_bytes)`: the host-memory limit a budget sets for the whole command;
- `make_backend(cfg)`: the module-wise worker (backends/base.py's Backend protocol);
- `make_watchdog(cfg, plan, limit_bytes)`: what samples the trainer's memory;
- `add_summary_fields(summary, ...)` and `summary_lines(summary)`: its figures in the summary;
- `drive(...)`: how a command trains on it (the torch targets: one trainer child; ort: a
  torch-free loop that starts one trainer per module), called by driver.run_command.
torch-free: importing a target imports no framework.
"""

from __future__ import annotations


class Target:
    name = "cpu"
    schemes = ("sequential", "multilap", "parallel", "e2e")
    # every command runs through the torch-free driver, budgeted or not (ORT: torch never
    # trains in the command's process); else only budgeted ones do
    always_driven = False

    def check_available(self, cfg, *, setup: bool = False) -> None:
        from ..compiled import require_compiler
        require_compiler(cfg)

    def validate(self, cfg) -> None:
        from ..errors import UserError
        if cfg.amp is not None:
            raise UserError(
                f"--amp {cfg.amp} is mixed precision for --device cuda (fp16 trained with a "
                f"gradient scaler, bf16 on GPUs with native bfloat16); on --device {cfg.device} "
                f"training runs in fp32. Add --device cuda, or leave out --amp.")

    def memory_model(self):
        from ..memory.model import MemoryModel
        return MemoryModel()

    def host_limit(self, budget_bytes: int | None) -> int | None:
        return budget_bytes

    def make_backend(self, cfg):
        from ..backends.torch_backend import TorchBackend
        return TorchBackend(cfg)

    def make_watchdog(self, cfg, plan: dict, limit_bytes: int | None):
        from ..memory.measure import RssWatchdog
        return RssWatchdog(limit_bytes=limit_bytes)

    def add_summary_fields(self, summary: dict, *, run, plan: dict, watchdog, backend=None,
                           orchestrator_peak_bytes: int = 0) -> None:
        return None

    def summary_lines(self, summary: dict) -> list[str]:
        return []

    def drive(self, cfg, *, plan, fingerprint, resume, budget_bytes, guard, prepare_only: bool):
        """Train (or prepare) the run: the torch targets stage a new run and start one trainer
        child for the whole of it (driver.run_trainer_child)."""
        from ..driver import drive_trainer_child
        return drive_trainer_child(cfg, plan=plan, fingerprint=fingerprint, resume=resume,
                                   host_limit_bytes=self.host_limit(budget_bytes), guard=guard,
                                   prepare_only=prepare_only)
