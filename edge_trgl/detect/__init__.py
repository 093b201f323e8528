"""Abnormal and adversarial input detection from the network's transport dynamics (issue 18).

`features.py` records each block's displacement (the terms of the kinetic energy), `attacks.py`
and `abnormal.py` make abnormal inputs, `sets.py` sees them through the network, `logistic.py` and
`detectors.py` fit and score detectors, `fit.py` is `edge-trgl detect fit`, `score.py` is
`edge-trgl detect score`, `export_outputs.py` adds the features to an ONNX export; `names.py`
holds the torch-free names and defaults the CLI parser reads, `identity.py` where a run's detector
lives and which weights it belongs to. The device side (numpy + onnxruntime only) is
`edge_trgl/detect_runtime.py`. names.py, identity.py and logistic.py import no torch; importing
this package imports nothing.
"""
