"""The CUDA path. Everything that does not need a GPU runs here on the CPU: the memory accounting
formulas (unified vs discrete budgets), the planner fed with fake CUDA probe results, the CUDA
watchdog fed with a fake device, the refusals (no CUDA, no bf16, --amp on the CPU). The tests
marked `gpu` need a CUDA device and skip cleanly, saying why, without one. The batch prefetcher's
CPU tests are in test_prefetch.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edge_trgl.config import TrainConfig
from edge_trgl.errors import UserError
from edge_trgl.memory import cuda as cm
from edge_trgl import targets
from edge_trgl.targets import cuda as target_cuda
from edge_trgl.prefetch import prefetch_batches

MB = 1000**2
HAVE_CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(
    not HAVE_CUDA,
    reason=f"needs a CUDA GPU: torch.cuda.is_available() is False here (torch {torch.__version__}, "
           f"{'a CPU-only build' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda + ' build, no device'})")
no_gpu = pytest.mark.skipif(HAVE_CUDA, reason="checks the refusal on a machine without CUDA")


# --- the accounting formulas ---------------------------------------------------------------

def test_budgeted_bytes_unified_counts_host_rss_discrete_does_not():
    kwargs = dict(allocated_bytes=300 * MB, reserved_bytes=400 * MB, context_bytes=500 * MB,
                  host_rss_bytes=1200 * MB)
    unified = cm.CudaPeaks(**kwargs, unified=True)
    discrete = cm.CudaPeaks(**kwargs, unified=False)
    # allocated lives inside reserved: never added on top of it
    assert unified.device_bytes == discrete.device_bytes == 900 * MB
    assert discrete.budgeted_bytes == 900 * MB
    assert unified.budgeted_bytes == 2100 * MB
    doc = unified.to_json()
    assert doc["budgeted_bytes"] == 2100 * MB and "host RSS" in doc["budget_covers"]
    assert "not budgeted" in discrete.to_json()["budget_covers"]


def fake_raw(batches, blocks=1, integrated=False, context=300 * MB, baseline=400 * MB):
    """What probe.py prints for a CUDA probe: host VmHWM per batch, allocator peaks, device facts."""
    return {"baseline_bytes": baseline,
            "results": [{"batch": b, "peak_bytes": baseline + 150 * MB + b * MB // 10,
                         "cuda_allocated_bytes": blocks * (10 * MB + b * MB // 2),
                         "cuda_reserved_bytes": blocks * (20 * MB + b * MB)} for b in sorted(batches)],
            "saved_bytes_per_sample": blocks * MB // 2,
            "cuda": {"device_name": "Fake GPU", "capability": "8.7", "integrated": integrated,
                     "total_bytes": 16_000 * MB, "used_bytes": 0, "reserved_now_bytes": 0,
                     "context_bytes": context, "host_rss_bytes": baseline}}


def test_probe_peaks_follow_the_device_rule():
    raw = fake_raw([8, 32])
    discrete = cm.probe_peaks(TrainConfig(device="cuda"), raw)
    assert discrete == {8: 28 * MB, 32: 52 * MB}  # reserved only
    unified = cm.probe_peaks(TrainConfig(device="cuda"), fake_raw([8, 32], integrated=True))
    host_above = {b: 150 * MB + b * MB // 10 for b in (8, 32)}
    assert unified == {b: discrete[b] + host_above[b] for b in (8, 32)}
    # a profile decides over what the device reports (rehearsing a Jetson plan on another GPU)
    rehearsal = cm.probe_peaks(TrainConfig(device="cuda", profile="jetson-nano-4gb"), raw)
    assert rehearsal == unified


def test_context_measured_on_discrete_default_or_profile_on_unified():
    cfg = TrainConfig(device="cuda")
    assert cm.probe_context_bytes(cfg, fake_raw([8], context=321 * MB))[0] == 321 * MB
    value, method = cm.probe_context_bytes(cfg, fake_raw([8], integrated=True, context=1 * MB))
    assert value == cm.DEFAULT_UNIFIED_CONTEXT_BYTES and "default" in method
    value, method = cm.probe_context_bytes(TrainConfig(device="cuda", profile="jetson-nano-4gb"),
                                           fake_raw([8]))
    assert value == 500 * MB and "jetson-nano-4gb" in method


def test_profile_budgets_for_cuda():
    budget, notes = cm.profile_budget(TrainConfig(device="cuda", profile="jetson-nano-4gb"))
    assert budget == 4000 * MB - 1200 * MB and "unified" in notes[0]
    budget, notes = cm.profile_budget(TrainConfig(device="cuda", profile="desktop-gpu-8gb"))
    assert budget == 8 * 1024**3 - 700 * MB and "GPU memory" in notes[0]
    with pytest.raises(UserError, match="GPU memory.*--mem-budget"):
        cm.profile_budget(TrainConfig(device="cuda", profile="laptop-8gb"))


# --- the planner, fed with fake CUDA probes ---------------------------------------------------

@pytest.fixture
def fake_probes(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_TRGL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(target_cuda, "require_cuda", lambda cfg: None)
    state = {"integrated": False, "context": 300 * MB, "calls": []}

    def raw_probe(cfg, in_shape, num_classes, arch, lo, hi, batches, threads):
        state["calls"].append((lo, hi, tuple(batches)))
        context = state["context"]
        return fake_raw(batches, blocks=hi - lo, integrated=state["integrated"],
                        context=context(lo, hi) if callable(context) else context)
    monkeypatch.setattr(cm, "raw_probe", raw_probe)
    return state


def plan_for(**overrides):
    from edge_trgl.memory.budgeted import plan_budgeted
    from edge_trgl.modules import architecture
    from edge_trgl.data import load_dataset_for as load_data
    cfg = TrainConfig(device="cuda", model="resnet20", synthetic_train=200, synthetic_test=50,
                      batch_size=128, threads=1, epochs=1, **overrides).validate()
    dataset = load_data(cfg)
    return plan_budgeted(cfg, dataset, architecture(cfg, dataset.in_shape, dataset.num_classes),
                         target_cuda.TARGET.memory_model())


def test_discrete_plan_budgets_device_memory_only(fake_probes):
    from edge_trgl.memory.budgeted import SAFETY
    from edge_trgl.memory.measure import rss_bytes
    budget = 700 * MB
    plan = plan_for(mem_budget="700MB")
    usable = int(budget * SAFETY)
    assert plan.estimated_peak_bytes <= usable
    for row in plan.module_estimates:
        assert row["accounting"] == "cuda-discrete"
        # estimate = the probe's reserved peak + the measured context, nothing from the host
        assert row["estimated_peak_bytes"] == row["measured_probe_bytes"] + 300 * MB
        assert row["measured_probe_bytes"] == row["cuda_reserved_bytes"]
        assert row["host_rss_estimate_bytes"] > rss_bytes() // 2
        # host RSS is reported, not budgeted: counted, this module would not fit
        assert row["host_rss_estimate_bytes"] + row["estimated_peak_bytes"] > budget
        assert row["estimated_peak_bytes"] <= usable
    # reserved per block at batch 128 is 148 MB and 665 - 300 MB leave room for 2 blocks a module
    assert all(hi - lo <= 2 for lo, hi in plan.splits) and plan.batch_size == 128
    assert any("discrete GPU" in n and "not budgeted" in n for n in plan.notes)


def test_unified_plan_counts_host_rss_and_context(fake_probes):
    from edge_trgl.memory.measure import rss_bytes
    fake_probes["integrated"] = True
    # the same budget that fits on a discrete GPU cannot hold host RSS + the context here
    with pytest.raises(UserError, match="CUDA context"):
        plan_for(mem_budget="700MB")
    plan = plan_for(mem_budget="3GB")
    for row in plan.module_estimates:
        assert row["accounting"] == "cuda-unified"
        fixed = row["process_baseline_bytes"] + row["batch_buffer_bytes"]
        assert row["process_baseline_bytes"] >= rss_bytes() // 2 + cm.DEFAULT_UNIFIED_CONTEXT_BYTES
        assert row["estimated_peak_bytes"] == row["measured_probe_bytes"] + fixed
        # the module's cost includes the probe's host RSS above its baseline, not just reserved
        assert row["measured_probe_bytes"] > row["cuda_reserved_bytes"]
    assert plan.estimated_peak_bytes <= 0.95 * 3e9
    assert any("unified memory" in n for n in plan.notes)


def test_plan_takes_the_largest_context_any_module_probe_measured(fake_probes):
    # a working context grows with the kernels loaded: here, with the module's last block
    fake_probes["context"] = lambda lo, hi: 300 * MB + hi * MB
    plan = plan_for(mem_budget="900MB")
    assert len(plan.splits) > 1 and plan.splits[-1][1] == 10
    # every row carries the largest (the last module's), not the first probe's 301 MB
    assert {r["cuda_context_bytes"] for r in plan.module_estimates} == {310 * MB}
    for row in plan.module_estimates:
        assert row["estimated_peak_bytes"] == row["measured_probe_bytes"] + 310 * MB


def test_context_alone_over_budget_is_refused_with_numbers(fake_probes):
    with pytest.raises(UserError, match=r"CUDA context \(300 MB"):
        plan_for(mem_budget="300MB")


def test_jetson_profile_plan_is_unified_even_on_a_discrete_probe(fake_probes):
    plan = plan_for(profile="jetson-orin-nano-8gb")
    assert plan.budget_bytes == 6500 * MB
    assert {r["accounting"] for r in plan.module_estimates} == {"cuda-unified"}
    assert {r["cuda_context_bytes"] for r in plan.module_estimates} == {500 * MB}


# --- the CUDA watchdog, fed with a fake device ------------------------------------------------

class FakeCuda:
    def __init__(self, integrated=False):
        self.initialized, self.reserved, self.context = True, 0, 300 * MB
        self.max_allocated = self.max_reserved = 0
        self.total = 16_000 * MB
        self.integrated = integrated
        self.emptied = 0

    def is_initialized(self):
        return self.initialized

    def memory_reserved(self, device=None):
        return self.reserved

    def mem_get_info(self, device=None):
        return self.total - self.context - self.reserved, self.total

    def max_memory_allocated(self, device=None):
        return self.max_allocated

    def max_memory_reserved(self, device=None):
        return self.max_reserved

    def empty_cache(self):
        self.emptied += 1

    def reset_peak_memory_stats(self, device=None):
        self.max_allocated = self.max_reserved = 0

    def current_device(self):
        return 0

    def get_device_properties(self, index):
        return SimpleNamespace(name="Fake GPU", is_integrated=self.integrated, major=8, minor=7)


def watchdog(cfg, limit, fake):
    dog = cm.CudaWatchdog(cfg, limit_bytes=limit)
    dog._torch = SimpleNamespace(cuda=fake)
    return dog


def test_watchdog_discrete_compares_reserved_plus_context_with_the_budget():
    fake = FakeCuda()
    dog = watchdog(TrainConfig(device="cuda"), 1000 * MB, fake)
    fake.reserved = 600 * MB
    dog.sample()
    assert dog.exceeded_bytes is None and dog.context_max_bytes == 300 * MB
    assert "CUDA reserved" in dog.measured_what and "host" not in dog.measured_what
    fake.reserved = 800 * MB
    dog.sample()
    assert dog.exceeded_bytes == 1100 * MB
    fake.max_allocated, fake.max_reserved = 700 * MB, 800 * MB
    fields = dog.summary_fields(host_peak_bytes=5000 * MB, budget_bytes=1000 * MB)
    assert fields["cuda_budgeted_peak_bytes"] == 1100 * MB  # host RSS not budgeted
    assert fields["cuda_peak_allocated_bytes"] == 700 * MB and fields["cuda_over_budget"]
    assert fields["cuda_host_peak_rss_bytes"] == 5000 * MB
    assert all("cuda" in key for key in fields)  # the benchmark harness collects them by name
    line = cm.format_cuda_summary({**fields, "budget_bytes": 1000 * MB})
    assert "reserved 800 MB" in line and "context 300 MB" in line


def test_watchdog_unified_adds_host_rss_and_uses_the_profile_context():
    from edge_trgl.memory.measure import rss_bytes
    fake = FakeCuda()  # says discrete: the profile wins
    dog = watchdog(TrainConfig(device="cuda", profile="jetson-nano-4gb"), 10_000 * MB, fake)
    fake.reserved = 100 * MB
    dog.sample()
    assert dog.context_max_bytes == 500 * MB
    assert dog.budgeted_max_sampled_bytes >= rss_bytes() // 2 + 600 * MB
    assert "host RSS" in dog.measured_what
    fields = dog.summary_fields(host_peak_bytes=1000 * MB, budget_bytes=2800 * MB)
    assert fields["cuda_unified_memory"] and not fields["cuda_over_budget"]


def test_watchdog_phases_reset_the_allocator_peaks_and_keep_the_process_peak():
    fake = FakeCuda()
    dog = watchdog(TrainConfig(device="cuda"), None, fake)
    fake.max_allocated, fake.max_reserved = 200 * MB, 300 * MB  # module 0
    dog.start_phase()  # module 1 starts
    assert fake.emptied == 1 and fake.max_reserved == 0
    fake.max_allocated, fake.max_reserved = 50 * MB, 100 * MB
    fake.reserved = 100 * MB
    dog.sample()  # during module 1's training: the context is read while memory is held
    assert dog.phase_budgeted_bytes(10 * MB) == 100 * MB + 300 * MB  # this module's own
    fields = dog.summary_fields(host_peak_bytes=0, budget_bytes=None)
    assert fields["cuda_peak_reserved_bytes"] == 300 * MB  # the process's, over both modules
    assert fields["cuda_over_budget"] is False


def test_watchdog_never_initialises_cuda_itself():
    fake = FakeCuda()
    fake.initialized = False
    dog = watchdog(TrainConfig(device="cuda"), 100 * MB, fake)
    fake.reserved = 10_000 * MB  # would be over; not readable before CUDA is initialised
    dog.sample()
    assert dog.exceeded_bytes is None and dog.device_name is None


# --- refusals ----------------------------------------------------------------------------------

@no_gpu
def test_cuda_unavailable_is_a_user_error_and_nothing_is_written(tmp_path, capsys):
    from edge_trgl.cli.main import main
    from edge_trgl.train import train
    with pytest.raises(UserError, match="--device cuda.*--device cpu"):
        target_cuda.require_cuda(TrainConfig(device="cuda"))
    out = tmp_path / "run"
    with pytest.raises(UserError, match="CPU-only build|sees no CUDA device"):
        train(TrainConfig(device="cuda", out=str(out), synthetic_train=100, synthetic_test=20))
    assert not out.exists()
    assert main(["train", "--device", "cuda", "--out", str(out), "--quiet"]) == 2
    assert "--device cuda was asked for" in " ".join(capsys.readouterr().err.split())
    assert not out.exists()
    with pytest.raises(UserError, match="--device cuda"):
        target_cuda.TARGET.make_backend(TrainConfig(device="cuda"))


def test_bf16_without_native_support_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="Jetson Nano", major=5, minor=3))
    with pytest.raises(UserError, match=r"--amp bf16.*Jetson Nano.*5\.3.*--amp fp16"):
        target_cuda.require_cuda(TrainConfig(device="cuda", amp="bf16"))
    target_cuda.require_cuda(TrainConfig(device="cuda", amp="fp16"))  # fp16 needs no native bf16
    # emulated bf16 (what is_bf16_supported() says by default on older GPUs) is not enough
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    with pytest.raises(UserError, match="native bfloat16"):
        target_cuda.require_cuda(TrainConfig(device="cuda", amp="bf16"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    target_cuda.require_cuda(TrainConfig(device="cuda", amp="bf16"))


@pytest.mark.parametrize("amp,device,ok", [(None, "cpu", True), ("fp16", "cuda", True),
                                           ("bf16", "cuda", True), ("fp16", "cpu", False),
                                           ("bf16", "cpu", False), ("fp8", "cuda", False)])
def test_amp_options(amp, device, ok):
    cfg = TrainConfig(amp=amp, device=device)
    if ok:
        targets.validate(cfg)
    else:
        with pytest.raises(UserError, match="--amp"):
            targets.validate(cfg)


def test_scaler_only_for_fp16_on_cuda():
    from edge_trgl.backends.torch_backend import autocast, make_scaler
    cpu = torch.device("cpu")
    assert make_scaler(TrainConfig(), cpu) is None
    assert make_scaler(TrainConfig(amp="bf16", device="cuda"), torch.device("cuda")) is None
    with autocast(TrainConfig(), cpu):
        assert not torch.is_autocast_enabled("cpu")


def test_env_reports_a_cuda_device(monkeypatch):
    from edge_trgl.envinfo import report
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        name="Orin", total_memory=8 * 1024**3, major=8, minor=7, is_integrated=True))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90300)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    info = report()
    assert info["devices"] == ["cpu", "cuda:0"] and info["backends"]["torch-cuda"]
    assert info["cuda"]["integrated"] and "unified" in info["cuda"]["memory_accounting"]
    assert info["cuda"]["bf16"] and info["cuda"]["cudnn"] == 90300
    json.dumps(info)


@no_gpu
def test_env_says_why_cuda_is_missing(capsys):
    from edge_trgl.cli.main import main
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "CUDA: not available (" in out and "devices: cpu" in out


@no_gpu
def test_cuda_benchmark_refuses_without_cuda(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_resnet56.py"
    spec = importlib.util.spec_from_file_location("cuda_resnet56", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--results", str(tmp_path / "results")])
    assert exc.value.code == 2
    assert "needs an NVIDIA GPU" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "results").exists()


def test_fp16_loss_scale_state_survives_a_checkpoint():
    from edge_trgl.backends.torch_backend import load_scaler_state, scaler_state
    assert scaler_state(None) is None
    before = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    state = scaler_state(before)
    assert json.loads(json.dumps(state)) == state  # goes into the checkpoint's JSON metadata
    after = torch.amp.GradScaler("cpu")
    load_scaler_state(after, state)
    assert after.get_scale() == 1024.0 and after.get_growth_interval() == 7
    load_scaler_state(None, state)  # no scaler (fp32 run): nothing to restore


def test_watchdog_resets_the_process_wide_allocator_peaks_when_a_run_starts():
    fake = FakeCuda()
    fake.max_allocated, fake.max_reserved = 900 * MB, 1000 * MB  # an earlier run in this process
    dog = watchdog(TrainConfig(device="cuda"), None, fake)
    with dog:
        fake.max_allocated, fake.max_reserved = 50 * MB, 80 * MB
    assert dog.summary_fields(0, None)["cuda_peak_reserved_bytes"] == 80 * MB


def test_watchdog_reads_device_memory_only_once_a_context_surely_exists():
    """CUDA can be initialised (device properties were asked for) before any context exists;
    mem_get_info from the watchdog's thread would create one, so it waits for an allocation."""
    fake = FakeCuda()
    calls = []
    real = fake.mem_get_info
    fake.mem_get_info = lambda device=None: calls.append(1) or real()
    dog = watchdog(TrainConfig(device="cuda"), 100 * MB, fake)
    dog.sample()
    assert not calls and dog.exceeded_bytes is None
    fake.reserved = 200 * MB
    dog.sample()
    assert calls and dog.exceeded_bytes == 500 * MB


def test_watchdog_takes_the_budget_rule_from_the_plan_before_cuda_starts():
    """A plan made for unified memory (its probe saw an integrated GPU) budgets host RSS from
    the first sample, before this process has touched CUDA."""
    fake = FakeCuda(integrated=True)
    fake.initialized = False
    dog = cm.CudaWatchdog(TrainConfig(device="cuda"), limit_bytes=1 * MB, unified=True)
    dog._torch = SimpleNamespace(cuda=fake)
    dog.sample()
    assert dog.exceeded_bytes is not None and dog.exceeded_bytes > 1 * MB
    assert "host RSS" in dog.measured_what


def test_unified_host_buffers_follow_each_modules_input():
    """Module 0 reads images; later modules read feature maps, several times larger; their
    host (pinned) buffers are planned at that size."""
    acct = object.__new__(cm.PlanAccounting)
    acct.input_elements = [3 * 32 * 32, 16 * 32 * 32, 16 * 32 * 32, 32 * 16 * 16]
    assert acct.host_buffers(64, 1) == 16 / 3 * acct.host_buffers(64, 0)
    assert acct.host_buffers(64, 3) == cm.host_buffer_bytes(32 * 16 * 16, 64)
    assert acct.host_buffers(64, 0) == cm.host_buffer_bytes(3 * 32 * 32, 64)


def test_to_device_passes_a_cpu_tensor_through():
    from edge_trgl.backends.torch_backend import to_device
    t = torch.ones(3)
    assert to_device(t, torch.device("cpu")) is t
    assert torch.equal(to_device(np.ones(3, dtype=np.float32), torch.device("cpu")), t)


# --- on a GPU ------------------------------------------------------------------------------------

def gpu_config(tmp_path, **overrides):
    base = dict(device="cuda", model="resnet8", width=0.5, synthetic_train=512, synthetic_test=128,
                epochs=2, modules=2, batch_size=64, threads=2, progress=False,
                out=str(tmp_path / "run"))
    base.update(overrides)
    return TrainConfig(**base)


@gpu
@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_gpu_sequential_run(tmp_path, amp):
    from edge_trgl.train import train
    if amp == "bf16" and not target_cuda.bf16_supported(torch):
        pytest.skip("this GPU has no native bfloat16")
    summary = train(gpu_config(tmp_path, amp=amp))
    assert summary["device"] == "cuda" and len(summary["modules"]) == 2
    assert all(row["test_acc"] is not None for row in summary["modules"])
    losses = [json.loads(line)["train_loss"]
              for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert 0 < summary["cuda_peak_allocated_bytes"] <= summary["cuda_peak_reserved_bytes"]
    assert summary["cuda_context_bytes"] > 0 and summary["cuda_host_peak_rss_bytes"] > 0
    host = summary["cuda_host_peak_rss_bytes"] if summary["cuda_unified_memory"] else 0
    assert summary["cuda_budgeted_peak_bytes"] == (summary["cuda_peak_reserved_bytes"]
                                                   + summary["cuda_context_bytes"] + host)


@gpu
def test_gpu_resident_e2e_run(tmp_path):
    from edge_trgl.train import train
    summary = train(gpu_config(tmp_path, scheme="e2e", amp="fp16"))
    assert summary["best_test_acc"] is not None and summary["cuda_peak_reserved_bytes"] > 0


@gpu
@pytest.mark.parametrize("budget", [dict(mem_budget="2GB"), dict(profile="jetson-orin-nano-8gb")],
                         ids=["discrete-2GB", "unified-rehearsal"])
def test_gpu_budgeted_run_stays_under_its_budget(tmp_path, monkeypatch, budget):
    """Through the CLI in a fresh process, as a user runs it: this test process may already hold
    a CUDA context and allocator peaks of its own, which would count in the planner's probes."""
    import subprocess
    import sys
    props = torch.cuda.get_device_properties(0)
    if "mem_budget" in budget and getattr(props, "is_integrated", False):
        pytest.skip(f"{props.name} is an integrated GPU: there a 2GB budget covers host RSS too "
                    f"(the profile case checks it)")
    monkeypatch.setenv("EDGE_TRGL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--device", "cuda", "--model", "resnet20", "--synthetic-train", "512",
            "--synthetic-test", "128", "--epochs", "1", "--batch-size", "128", "--threads", "2",
            "--quiet", "--out", str(out)]
    args += (["--mem-budget", budget["mem_budget"]] if "mem_budget" in budget
             else ["--profile", budget["profile"]])
    done = subprocess.run([sys.executable, "-m", "edge_trgl.cli.main", "train", *args],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget_bytes"]
    # context included; the sum of separately taken peaks is an upper bound of the real peak
    assert summary["cuda_budgeted_peak_bytes"] <= summary["budget_bytes"], summary
    assert not summary["over_budget"]
    for row in summary["modules"]:
        assert row["measured_peak_bytes"] <= summary["budget_bytes"]


@gpu
def test_gpu_pinned_batches_reach_the_device():
    from edge_trgl.backends.torch_backend import to_device
    from edge_trgl.prefetch import pin_inputs
    x, y = pin_inputs((np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(2)))
    assert x.is_pinned() and isinstance(y, np.ndarray)
    on_gpu = to_device(x, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), x)
    batches = list(prefetch_batches(iter([(np.ones((2, 2), np.float32), np.zeros(2))] * 3), "cuda"))
    assert len(batches) == 3 and all(b[0].is_pinned() for b in batches)
