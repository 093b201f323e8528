"""A run's verification before it is resumed or exported (the Run class's mixin): which weight
files the last checkpoint replaces, every listed file against its checksum, the budget and the
checkpoint against the plan, and the metrics log's plan. Nothing here writes: a refused command
leaves the run byte-identical (run.py says why that order matters)."""

from __future__ import annotations

import json
import re

from .atomic import sha256_file
from .errors import UserError
from .run_schema import RESTORE_MANIFEST, some, store_index

_CKPT_BLOCK = re.compile(r"block([0-9]+)\.")


class RunVerification:
    """Mixed into run.Run, whose root, manifest, checksum and _damaged these methods use."""

    def replaced_by_checkpoint(self, cfg) -> set[str]:
        """Store files that the resume point's checkpoint replaces: those of the module it was
        taken in (every module for parallel/e2e). A crash while that module was being written
        back may leave them newer than the manifest, so they are neither required to be listed
        nor checked, and unlisted copies of them are torn."""
        from .store import block_path, head_path, optim_path
        progress = self.manifest.get("progress") or {}
        if progress.get("phase") != "train" or not progress.get("ckpt"):
            return set()
        plan = self.check_plan()
        splits = plan["splits"]
        modules = (resident_modules(plan) if cfg.scheme in ("parallel", "e2e")
                   else [progress["module"]])
        skip = set()
        for k in modules:
            lo, hi = splits[k]
            skip.update(block_path(i) for i in range(lo, hi))
            skip.update((head_path(k), optim_path(k)))
        return skip

    def verify_files(self, cfg) -> None:
        """The whole run is what the manifest says (read-only): every file a started run needs is
        listed (config, plan, summary when complete, every block and head of the plan, the
        resume point's checkpoint), nothing listed lies outside the plan, every listed file but
        the feature cache (checked when read, rebuilt when damaged) matches its sha256, the
        resume point fits the config, and the committed lines of metrics.jsonl are intact."""
        from .store import block_path, head_path
        m, plan = self.manifest, self.check_plan()
        files = m["files"]
        started = plan is not None and self.started
        skip = self.replaced_by_checkpoint(cfg) if started else set()
        if started:
            splits = plan["splits"]
            needed = ["config.json", "plan.json"]
            needed += [block_path(i) for i in range(splits[-1][1])]
            needed += [head_path(k) for k in range(len(splits))]
            if m["status"] == "complete":
                needed.append("summary.json")
            progress = m["progress"]
            if progress.get("phase") == "train" and progress.get("ckpt"):
                needed.append(progress["ckpt"])
            missing = [rel for rel in needed if rel not in files and rel not in skip]
            if missing:
                raise self._damaged(f"its manifest does not list {some(missing)}, which the run "
                                    f"needs at its resume point", RESTORE_MANIFEST)
            bound = {"blocks": splits[-1][1], "heads": len(splits), "optim": len(splits)}
            extra = [rel for rel in files if store_index(rel) is not None
                     and store_index(rel)[1] >= bound[store_index(rel)[0]]]
            if extra:
                raise self._damaged(f"its manifest lists {some(extra)}, beyond the {splits[-1][1]} "
                                    f"blocks and {len(splits)} modules of its plan.json",
                                    RESTORE_MANIFEST)
            laps = cfg.laps if cfg.scheme == "multilap" else 1
            records = [progress, *m["modules"].values(), *m["caches"].values()]
            last_lap = max(rec.get("lap", 0) for rec in records)
            if last_lap >= laps:
                raise self._damaged(f"its manifest records lap {last_lap}, but the run trains "
                                    f"{laps} lap(s) (config.json)", RESTORE_MANIFEST)
            self._check_budget(cfg, plan)
            if cfg.scheme in ("sequential", "multilap") and len(splits) > 1 and plan["views"] < 1:
                raise self._damaged("its plan.json caches 0 views of the train set for a "
                                    "module-wise scheme, which needs at least 1",
                                    "Restore plan.json from a backup, or start a new run.")
        bad = []
        for rel, expected in sorted(files.items()):
            if rel.startswith("cache/") or rel in skip:
                continue
            path = self.root / rel
            if not path.is_file():
                bad.append(f"{rel} (missing)")
            elif sha256_file(path) != expected:
                bad.append(f"{rel} (checksum mismatch)")
        if bad:
            raise UserError(f"The run in {self.root} has damaged files: {some(bad)}. They hold "
                            f"trained weights or records that cannot be rebuilt from the rest of "
                            f"the run; restore them from a backup, or start a new run. Nothing in "
                            f"the run directory was changed or removed.")
        if started and skip:
            self._check_checkpoint_covers(cfg, plan)
        self._metrics_plan()  # raises if committed lines are damaged
        self._verified = True

    def _check_budget(self, cfg, plan: dict) -> None:
        """plan.json's memory budget is the one config.json asked for (none without --mem-budget
        or --profile), and a budgeted plan carries its estimate."""
        from .budget import parse_size
        budget = plan.get("budget_bytes")
        fix = "Restore plan.json from a backup, or start a new run."
        if cfg.mem_budget is None and cfg.profile is None:
            if budget is not None:
                raise self._damaged(f"its plan.json has a memory budget ({budget} bytes) that its "
                                    f"config.json never asked for", fix)
            return
        if budget is None or plan.get("estimated_peak_bytes") is None:
            raise self._damaged("its config.json asks for a memory budget, but its plan.json has "
                                "no budget or no estimate", fix)
        if cfg.mem_budget is not None:
            try:
                wanted = parse_size(cfg.mem_budget)
            except UserError as exc:
                raise self._damaged(f"its config.json has an unreadable mem_budget ({exc})",
                                    "Restore config.json from a backup, or start a new "
                                    "run.") from None
            if wanted != budget:
                raise self._damaged(f"its plan.json budget ({budget} bytes) is not the "
                                    f"--mem-budget {cfg.mem_budget} of its config.json", fix)

    def _check_checkpoint_covers(self, cfg, plan: dict) -> None:
        """The resume point's checkpoint (already checksummed) holds exactly the blocks and
        head(s) that plan.json gives the module(s) it replaces: a plan that disagrees with the
        trained model is refused here rather than by a failed load in the middle of the run.
        Reads only the safetensors header."""
        rel = self.manifest["progress"]["ckpt"]
        try:
            with open(self.root / rel, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= 100_000_000:
                    raise ValueError("bad header size")
                header = json.loads(fh.read(size).decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("its header is not a JSON object")
            names = [n for n in header if n != "__metadata__"]
        except (OSError, ValueError, RecursionError, TypeError) as exc:
            raise self._damaged(f"its checkpoint {rel} is not a readable safetensors file "
                                f"({exc})") from None
        blocks = sorted({int(m.group(1)) for m in map(_CKPT_BLOCK.match, names) if m})
        splits = plan["splits"]
        resident = cfg.scheme in ("parallel", "e2e")
        modules = resident_modules(plan) if resident else [self.manifest["progress"]["module"]]
        wanted = sorted(i for k in modules for i in range(*splits[k]))
        heads = {n.split(".", 1)[0] for n in names if n.startswith("head")}
        wanted_heads = {f"head{k}" for k in modules} if resident else {"head"}
        # the first and last block and nothing outside (a block without weights would have no
        # tensors; none of the model families has one, but the check does not rely on it)
        if (not blocks or (blocks[0], blocks[-1]) != (wanted[0], wanted[-1])
                or not set(blocks) <= set(wanted) or heads != wanted_heads):
            have = f"{blocks[0]}-{blocks[-1]}" if blocks else "no blocks"  # as block_range
            which = "the network" if resident else f"module {modules[0]}"
            raise self._damaged(
                f"its checkpoint {rel} holds blocks {have} of {which}, but plan.json gives it "
                f"blocks {wanted[0]}-{wanted[-1]}", "Restore plan.json from a backup, or start a "
                "new run.")

    def _metrics_plan(self) -> bytes | None:
        """What metrics.jsonl must become: None to keep it, else the committed lines (those a
        manifest save followed; later ones belong to an epoch that is redone on resume). Refuses
        (UserError) when a committed line is damaged: the log of finished epochs is not ours to
        drop."""
        path = self.root / "metrics.jsonl"
        committed = self.manifest.get("metrics_lines")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(f"The log {path} cannot be read ({exc.strerror}). Make it readable, "
                            f"or move it away to continue the run without the earlier epochs' "
                            f"log.") from None
        lines = data.splitlines(keepends=True)
        good = []
        for line in lines:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError):
                break
            if not isinstance(record, dict) or (committed is not None and len(good) >= committed):
                break
            good.append(line)
        if committed is not None and len(good) < committed:
            raise UserError(
                f"The per-epoch log {path} is damaged: the run manifest says its first "
                f"{committed} lines are the log of finished epochs, but line {len(good) + 1} is "
                f"not a complete JSON record. Nothing was changed. Restore the file from a "
                f"backup; or, to continue without that log, move it away (e.g. `mv {path} "
                f"{path}.damaged`) and resume: the log then starts again at the next epoch.")
        return b"".join(good) if len(good) != len(lines) else None


def resident_modules(plan: dict) -> list[int]:
    """The modules a parallel / e2e checkpoint holds: all of them, or (--distributed) this
    rank's share."""
    share = plan.get("distributed")
    if share:
        return list(share["rank_modules"][share["rank"]])
    return list(range(len(plan["splits"])))
