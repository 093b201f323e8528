"""edge-trgl: module-wise TRGL training under a memory budget.

The Python API (edge_trgl/api.py; README "Python API")::

    from edge_trgl import TrainConfig, train, plan, export, predict

* ``TrainConfig``: the run's settings (the CLI's options, same names with underscores).
* ``train(cfg, resume=None, prepare_only=False) -> dict``: train (or resume) a run; the summary.
* ``plan(cfg) -> dict``: the plan `edge-trgl plan` prints, nothing trained or written.
* ``export(run_dir, module=None, out=None, data_dir=None) -> dict``: ONNX + state dict; the report.
* ``predict(model, images, top=1) -> list[dict]``: class names for image files.

Importing the package is cheap and torch-free (torch-free worker processes import it): the names
above are looked up on first use (PEP 562), and torch is imported only by what trains, exports
or runs a PyTorch model.
"""

__version__ = "0.1.0"

# name -> the module that defines it, imported on first access. (By name, not with an import
# statement: the package root is imported for __version__ by modules that the API reaches, and
# must stay a leaf of the package's import graph; tests/test_layout.py checks for cycles.)
_LAZY = {
    "TrainConfig": "edge_trgl.config",
    "UserError": "edge_trgl.errors",
    "train": "edge_trgl.api",
    "plan": "edge_trgl.api",
    "compare": "edge_trgl.api",
    "export": "edge_trgl.api",
    "predict": "edge_trgl.api",
    "open_model": "edge_trgl.api",
}

__all__ = ["__version__", *_LAZY]

import sys as _sys  # noqa: E402
import types as _types  # noqa: E402


class _Package(_types.ModuleType):
    """The package module. `train` and `export` are API functions and also submodules
    (edge_trgl/train.py, edge_trgl/export.py): importing a submodule makes Python set the
    package attribute of its name to the module, which would replace the function, or hide it
    from __getattr__ when the submodule was imported first. Here the attribute stays the
    function, as after `from .train import train` in an eager __init__: the modules are
    `sys.modules["edge_trgl.train"]`, and `from edge_trgl.export import export_run` works as
    always (only `import edge_trgl.export as m` gives the function)."""

    def __setattr__(self, name, value):
        if name in ("train", "export") and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_trgl' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
