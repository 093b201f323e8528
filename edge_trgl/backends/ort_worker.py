"""The ONNX Runtime trainer process: trains one module (or writes its feature cache, or runs a
memory probe) and exits. It never imports torch: it starts with `sys.modules['torch'] = None`
(see ort_common.WORKER_BOOT), so a stray import fails loudly instead of costing ~220 MB, and uses
only numpy, the compiled training classes of `onnxruntime.capi._pybind_state` (load_checkpoint,
Module.train_step, lazy_reset_grad) and a plain InferenceSession.

It runs the same training loop as the torch backend (loop.py, with OrtEngine below instead of
torch_backend.TorchEngine) and keeps the same contracts, so runs of the two can be mixed and
compared:
- inputs come from the same sources (context.Context: raw images augmented with the same seeded
  streams for module 0, the previous module's feature cache for later ones);
- weights are read from and written back to the block store under the torch state_dict's names
  (num_batches_tracked included), optimizer state in torch's format ("<index>.momentum_buffer",
  "<index>.exp_avg", ...), per-epoch checkpoints and the manifest's progress exactly as the torch
  backend writes them, so --resume works the same way;
- the feature cache is written with the same CacheWriter, views and manifest entry.

What ORT does not do for us, done here:
- The optimizer. ORT 1.19's SGD has no momentum and no weight decay, and its AdamW state cannot be
  read back through the Python bindings (so it could not be checkpointed in the store's format).
  NumpySGD / NumpyAdamW apply torch.optim.SGD / AdamW's update rules to the gradients ORT leaves in
  its parameter state after each train_step.
- BatchNorm running statistics. The TRAINING-mode graph computes the updated running mean/var as
  extra outputs but never writes them back; they are written back after every step. ONNX's
  running variance uses the biased batch variance, torch's the unbiased one; the update is
  corrected to torch's (n/(n-1), n = values per channel in the batch). Evaluation and the feature
  cache use the EVAL-mode graph, i.e. the running statistics.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: block torch before anything can import it
    import sys as _sys
    _sys.modules.setdefault("torch", None)

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.capi import _pybind_state as C

from ..atomic import atomic_write_json, sha256_file
from ..cache import write_module_cache
from ..config import TrainConfig
from ..rundata import open_run_data
from ..errors import UserError, error_record
from ..jobdirs import die_with_parent
from ..loop import no_read_ahead, train_module
from ..memory.measure import RssWatchdog, peak_rss_bytes, release_memory, reset_peak, rss_bytes
from ..run import Run
from ..context import Context, Interrupted
from ..store import block_path, head_path, load_tensors, optim_path, prefixed, save_tensors, unprefixed
from .base import ModuleTask
from .ort_common import ARTIFACT_FILES, EXIT_INTERRUPTED, EXIT_OVER_BUDGET, artifact_dir


class OverBudget(Exception):
    pass


# --- optimizers (torch's update rules, on float32 numpy arrays, in place) -------------------------

class NumpySGD:
    """torch.optim.SGD with momentum and weight decay (dampening 0, no Nesterov)."""

    def __init__(self, lr: float, momentum: float, weight_decay: float, count: int):
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[np.ndarray | None] = [None] * count

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = np.array(g, dtype=np.float32, copy=True)
                else:
                    buf *= np.float32(self.momentum)
                    buf += g
                g = buf
            p -= np.float32(self.lr) * g

    def state(self) -> dict[str, np.ndarray]:
        return {f"{i}.momentum_buffer": b for i, b in enumerate(self.buffers) if b is not None}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for key, value in arrays.items():
            index, name = key.split(".", 1)
            if name == "momentum_buffer":
                self.buffers[int(index)] = np.array(value, dtype=np.float32)


class NumpyAdamW:
    """torch.optim.AdamW (betas 0.9/0.999, eps 1e-8, no amsgrad), torch's defaults."""

    def __init__(self, lr: float, weight_decay: float, count: int,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg: list[np.ndarray | None] = [None] * count
        self.exp_avg_sq: list[np.ndarray | None] = [None] * count
        self.steps = [0.0] * count

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        b1, b2 = self.betas
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.exp_avg[i] is None:
                self.exp_avg[i] = np.zeros_like(p)
                self.exp_avg_sq[i] = np.zeros_like(p)
            self.steps[i] += 1.0
            t = self.steps[i]
            p *= np.float32(1.0 - self.lr * self.weight_decay)
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            m += np.float32(1.0 - b1) * (g - m)
            v *= np.float32(b2)
            v += np.float32(1.0 - b2) * g * g
            step_size = self.lr / (1.0 - b1 ** t)
            denom = np.sqrt(v) / np.float32(np.sqrt(1.0 - b2 ** t)) + np.float32(self.eps)
            p -= np.float32(step_size) * (m / denom)

    def state(self) -> dict[str, np.ndarray]:
        out = {}
        for i, m in enumerate(self.exp_avg):
            if m is not None:
                # shape (1,), as the torch backend stores it (np.ascontiguousarray of a 0-d step)
                out[f"{i}.step"] = np.array([self.steps[i]], dtype=np.float32)
                out[f"{i}.exp_avg"] = m
                out[f"{i}.exp_avg_sq"] = self.exp_avg_sq[i]
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for key, value in arrays.items():
            index, name = key.split(".", 1)
            i = int(index)
            if name == "step":
                self.steps[i] = float(np.asarray(value).reshape(-1)[0])
            elif name == "exp_avg":
                self.exp_avg[i] = np.array(value, dtype=np.float32)
            elif name == "exp_avg_sq":
                self.exp_avg_sq[i] = np.array(value, dtype=np.float32)


def make_optimizer(cfg, count: int):
    if cfg.optimizer == "adamw":
        return NumpyAdamW(cfg.lr, cfg.weight_decay, count)
    return NumpySGD(cfg.lr, cfg.momentum, cfg.weight_decay, count)


# --- one module on ONNX Runtime ------------------------------------------------------------------

def session_options(threads: int):
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # The arena keeps its high-water mark for the life of the session; without it, memory of a
    # step is returned, and the eval session and the training session do not both hold a peak.
    so.enable_cpu_mem_arena = False
    return so


class OrtModule:
    """One module's training graph (ORT Module over its checkpoint state), its eval graph, and
    every weight as a float32 numpy array keyed by the torch state_dict name ('blocks.<j>.<key>',
    'head.<key>'). The numpy arrays are the master copy; ORT's state is refreshed from them after
    every change."""

    def __init__(self, art_dir: Path, threads: int):
        self.dir = Path(art_dir)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        C.set_default_logger_severity(3)
        device = C.OrtDevice(C.OrtDevice.cpu(), C.OrtDevice.default_memory(), 0)
        self.state = C.load_checkpoint(str(self.dir / "checkpoint"))
        self.module = C.Module(str(self.dir / "training_model.onnx"), self.state, None, device,
                               session_options(threads))
        self.outputs = {name: i for i, name in enumerate(self.module.output_names(True))}
        self.trainable = list(self.meta["trainable"])
        self.frozen = list(self.meta["frozen"])
        self.params = {n: self.state.get_parameter(n) for n in self.trainable + self.frozen}
        self.eval_session = onnxruntime.InferenceSession(
            str(self.dir / "eval_model.onnx"), sess_options=session_options(threads),
            providers=["CPUExecutionProvider"])
        self.eval_inputs = [i.name for i in self.eval_session.get_inputs()]
        self.weights: dict[str, np.ndarray] = {}
        self.extra: dict[str, np.ndarray] = {}    # store keys not in the graph (num_batches_tracked)

    # weights <-> store ----------------------------------------------------------------------------
    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """state: every state_dict name of the module -> array (as torch's state_dict)."""
        missing = [n for n in self.meta["state_keys"] if n not in state]
        if missing:
            raise UserError(f"The stored weights of this module lack {missing[:5]}; the run "
                            f"directory is damaged or from another model. Start a new run.")
        graph = set(self.trainable) | set(self.frozen)
        for name in self.meta["state_keys"]:
            value = np.array(state[name], copy=True)
            if name in graph:
                value = np.ascontiguousarray(value, dtype=np.float32)
                self.weights[name] = value
                self.params[name].data.update_inplace(value)
            else:
                self.extra[name] = value

    def get_state(self) -> dict[str, np.ndarray]:
        return {n: (self.weights[n] if n in self.weights else self.extra[n])
                for n in self.meta["state_keys"]}

    def push(self, names) -> None:
        for n in names:
            self.params[n].data.update_inplace(self.weights[n])

    # steps ------------------------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray, weight: float, optimizer) -> dict:
        self.module.lazy_reset_grad()
        outs = C.OrtValueVector()
        self.module.train_step([np.ascontiguousarray(x, dtype=np.float32),
                                np.ascontiguousarray(y, dtype=np.int64),
                                np.array(weight, dtype=np.float32)], outs)
        o = self.outputs
        result = {"loss": float(outs[o["loss"]].numpy()), "ce": float(outs[o["ce"]].numpy()),
                  "energy": float(outs[o["energy"]].numpy()), "logits": outs[o["logits"]].numpy()}
        grads = [self.params[n].grad.numpy() for n in self.trainable]
        params = [self.weights[n] for n in self.trainable]
        optimizer.step(params, grads)
        del grads
        self.push(self.trainable)
        self._update_running_stats(outs, len(y))
        return result

    def _update_running_stats(self, outs, batch: int) -> None:
        for bn in self.meta["batchnorm"]:
            m = bn["momentum"]  # ONNX: new = m * old + (1 - m) * batch statistic
            mean = outs[self.outputs[bn["mean_out"]]].numpy()
            var_onnx = outs[self.outputs[bn["var_out"]]].numpy().astype(np.float64)
            old_var = self.weights[bn["var"]].astype(np.float64)
            n = batch * bn["values_per_channel_per_sample"]
            # ONNX's running var uses the biased batch variance, torch's the unbiased one. A
            # diverged module has inf here; loop.check_finite reports it, numpy need not.
            with np.errstate(invalid="ignore", over="ignore"):
                biased = (var_onnx - m * old_var) / (1.0 - m)
            unbiased = biased * (n / (n - 1)) if n > 1 else biased
            self.weights[bn["mean"]] = np.ascontiguousarray(mean, dtype=np.float32)
            self.weights[bn["var"]] = (m * old_var + (1.0 - m) * unbiased).astype(np.float32)
            self.push((bn["mean"], bn["var"]))
            tracked = bn["mean"].rsplit(".", 1)[0] + ".num_batches_tracked"
            if tracked in self.extra:  # torch counts the training forward passes of every BN
                self.extra[tracked] = self.extra[tracked] + 1

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = {n: self.weights[n] for n in self.eval_inputs if n != "input"}
        feed["input"] = np.ascontiguousarray(x, dtype=np.float32)
        features, logits = self.eval_session.run(["features", "logits"], feed)
        return features, logits


# --- the trainer: the shared training loop (loop.py) over OrtModule -------------------------------

def check_budget(ctx) -> None:
    exceeded = ctx.over_budget_bytes()
    if exceeded is not None:  # the orchestrator says it (exit status EXIT_OVER_BUDGET)
        raise OverBudget(exceeded)


def evaluate(mod: OrtModule, source, batch_size: int) -> float | None:
    if source is None or source.count == 0:
        return None
    correct = 0
    for x, y in source.batches(batch_size):
        _, logits = mod.predict(x)
        correct += int((logits.argmax(1) == y).sum())
    return correct / source.count


class OrtEngine:
    def __init__(self, cfg, run, k: int, threads: int):
        self.cfg, self.run = cfg, run
        self.dir = Path(run.root) / artifact_dir(k)
        expected = run.manifest.get("ort", {}).get("artifacts", {})
        for name in ARTIFACT_FILES:
            rel = f"{artifact_dir(k)}/{name}"
            if rel not in expected or sha256_file(Path(run.root) / rel) != expected[rel]:
                raise UserError(f"The ONNX Runtime artifacts of module {k} ({rel}) are missing or "
                                f"damaged; resume the run to rebuild them.")
        self.mod = OrtModule(self.dir, threads)
        self.meta = self.mod.meta

    # store <-> module state --------------------------------------------------------------------------
    def _state_from_store(self, task) -> dict[str, np.ndarray]:
        run, state = self.run, {}
        by_block: dict[int, dict] = {}
        for name, where in self.meta["store_map"].items():
            if where[0] == "block":
                i = task.lo + where[1]
                if i not in by_block:
                    by_block[i], _ = load_tensors(run.root, block_path(i), run.checksum(block_path(i)))
                state[name] = by_block[i][where[2]]
        head, _ = load_tensors(run.root, head_path(task.k), run.checksum(head_path(task.k)))
        for name, where in self.meta["store_map"].items():
            if where[0] == "head":
                state[name] = head[where[1]]
        return state

    def _store_tensors(self, task) -> tuple[dict[int, dict], dict]:
        blocks: dict[int, dict] = {i: {} for i in range(task.lo, task.hi)}
        head = {}
        for name, value in self.mod.get_state().items():
            where = self.meta["store_map"][name]
            if where[0] == "block":
                blocks[task.lo + where[1]][where[2]] = value
            else:
                head[where[1]] = value
        return blocks, head

    # the shared training loop's Engine (loop.py) --------------------------------------------------
    log_fields = {"backend": "ort"}

    def begin(self, cfg) -> None:
        self.optimizer = make_optimizer(cfg, len(self.meta["trainable"]))

    def load_from_store(self, task) -> None:
        self.mod.set_state(self._state_from_store(task))

    def load_optimizer(self, arrays: dict) -> None:
        self.optimizer.load(arrays)

    def load_checkpoint(self, task, tensors: dict, meta: dict) -> None:
        state = {}
        for name, where in self.meta["store_map"].items():
            key = (f"block{task.lo + where[1]}.{where[2]}" if where[0] == "block"
                   else f"head.{where[1]}")
            if key not in tensors:
                raise UserError(f"The checkpoint of this module lacks {key}; it does not belong "
                                f"to this module. The run is damaged; start a new run.")
            state[name] = tensors[key]
        self.mod.set_state(state)
        optim_state = unprefixed(tensors, "optim.")
        if optim_state:
            self.optimizer.load(optim_state)

    def checkpoint_tensors(self, task) -> tuple[dict, dict]:
        blocks, head = self._store_tensors(task)
        tensors = {}
        for i, block in blocks.items():
            tensors.update(prefixed(block, f"block{i}."))
        tensors.update(prefixed(head, "head."))
        return tensors, self.optimizer.state()

    def checkpoint_meta(self) -> dict:
        return {}

    def save_to_store(self, task) -> None:
        run = self.run
        blocks, head = self._store_tensors(task)
        for i, tensors in blocks.items():
            run.record_file(block_path(i), save_tensors(run.root, block_path(i), tensors))
        run.record_file(head_path(task.k), save_tensors(run.root, head_path(task.k), head))
        run.record_file(optim_path(task.k),
                        save_tensors(run.root, optim_path(task.k), self.optimizer.state()))

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    batches = staticmethod(no_read_ahead)

    def train_step(self, x, y, weight: float, keep_features: bool = False) -> tuple:
        # (the ORT target makes its views with an eval pass: keep_features is never asked)
        out = self.mod.train_step(x, y, weight, self.optimizer)
        return (out["loss"], out["ce"], out["energy"], (out["logits"].argmax(1) == y).sum(), len(y))

    def evaluate(self, source, batch_size: int) -> float | None:
        return evaluate(self.mod, source, batch_size)

    def check_budget(self, ctx) -> None:
        check_budget(ctx)

    def train_module(self, ctx, task) -> dict:
        self.begin(self.cfg)
        return train_module(ctx, task, self)

    # feature cache ----------------------------------------------------------------------------------
    def write_features(self, ctx, task) -> dict:
        self.mod.set_state(self._state_from_store(task))
        return write_module_cache(
            ctx, task, tuple(self.meta["out_shape"]),
            lambda source, aug_rng: source.batches(ctx.eval_batch_size, None, aug_rng),
            lambda x, scored: self.mod.predict(x), check_budget)  # one graph gives both


# --- memory probe ----------------------------------------------------------------------------------

def probe(job: dict) -> dict:
    """Train a few steps (numpy optimizer included) and run one eval batch at each batch size,
    ascending, in this fresh process; report VmHWM per batch size and the baseline before the
    module was loaded (interpreter + numpy + onnxruntime + the trainer's imports)."""
    cfg = TrainConfig.from_json(job["config"])
    release_memory()
    baseline = rss_bytes()
    if job.get("artifact_dir") is None:  # the trainer's baseline only
        return {"baseline_bytes": baseline, "results": []}
    mod = OrtModule(Path(job["artifact_dir"]), int(job["threads"]))
    rng = np.random.default_rng(0)
    state = {}
    for name in mod.meta["state_keys"]:
        if name in mod.frozen and name.endswith("running_var"):
            shape = mod.params[name].data.shape()
            state[name] = np.ones(shape, np.float32)
        elif name in mod.params:
            state[name] = rng.standard_normal(mod.params[name].data.shape()).astype(np.float32) * 0.05
        else:
            state[name] = np.zeros((), np.int64)
    mod.set_state(state)
    optimizer = make_optimizer(cfg, len(mod.trainable))
    in_shape = tuple(mod.meta["in_shape"])
    classes = int(mod.meta["num_classes"])
    results = []
    for batch in sorted(int(b) for b in job["batches"]):
        release_memory()
        reset_peak()
        for _ in range(int(job.get("steps", 4))):
            x = rng.standard_normal((batch, *in_shape)).astype(np.float32)
            y = rng.integers(0, classes, batch)
            mod.train_step(x, y, 0.5, optimizer)
        mod.predict(rng.standard_normal((batch, *in_shape)).astype(np.float32))
        results.append({"batch": batch, "peak_bytes": peak_rss_bytes()})
    return {"baseline_bytes": baseline, "results": results}


# --- entry point -------------------------------------------------------------------------------------

def _context(job: dict, run: Run, cfg, task: ModuleTask):
    # module 0 streams the images from RUN/data (its orchestrator verified or rebuilt it); a
    # later module reads the feature cache and needs the labels only
    dataset = open_run_data(run, images=task.k == 0, rebuild=False)
    limit = job.get("rss_limit_bytes")
    watchdog = RssWatchdog(limit_bytes=limit) if limit else None
    ctx = Context(run, cfg, dataset, dataset.in_shape, dataset.num_classes,
                  [tuple(s) for s in job["splits"]], job["batch_size"], job["views"], watchdog)
    ctx.eval_batch_size = job["eval_batch_size"]
    return ctx


def run_job(job: dict) -> dict:
    if job["mode"] == "probe":
        return probe(job)
    run = Run.open(Path(job["run_dir"]))
    cfg = TrainConfig.from_json(job["config"])
    task = ModuleTask(**job["task"])
    ctx = _context(job, run, cfg, task)
    trainer = OrtEngine(cfg, run, task.k, int(job["threads"]))
    ctx.install_signal_handlers(exit_code_now=EXIT_INTERRUPTED)
    watchdog = ctx.watchdog
    try:
        if watchdog is not None:
            watchdog.__enter__()
        if job["mode"] == "train":
            result = {"stats": trainer.train_module(ctx, task)}
        elif job["mode"] == "features":
            result = {"accuracy": trainer.write_features(ctx, task)}
        else:
            raise ValueError(f"unknown worker mode {job['mode']!r}")
    finally:
        if watchdog is not None:
            watchdog.__exit__(None, None, None)
        ctx.close_readers()
    if watchdog is not None:
        result["watchdog_max_rss_bytes"] = watchdog.max_seen_bytes
    return result


def main(argv: list[str]) -> int:
    """`python -c <ort_common.WORKER_BOOT> JOB.json`: run one job, write JOB.json's result_path."""
    job = json.loads(Path(argv[0]).read_text())
    die_with_parent(job.get("parent_pid"))
    code, result = 0, {}
    try:
        result = run_job(job)
    except Interrupted:
        code, result = EXIT_INTERRUPTED, {"interrupted": True}
    except OverBudget as exc:
        code, result = EXIT_OVER_BUDGET, {"over_budget_bytes": int(exc.args[0])}
    except UserError as exc:
        result = error_record(exc)
        code = result["exit_code"]
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["torch_imported"] = sys.modules.get("torch") is not None
    atomic_write_json(job["result_path"], result)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
