"""edge-trgl: module-wise TRGL training under a memory budget."""

__version__ = "0.1.0"
