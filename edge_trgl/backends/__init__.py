"""Training backends: the module-wise workers (torch_backend.py; the ONNX Runtime trainer,
ort_*.py). Each implements the small `Backend` protocol of base.py; which one a run uses is its
target's choice (targets/*.py: make_backend)."""
