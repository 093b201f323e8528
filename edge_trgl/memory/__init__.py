"""Memory measurement, estimation and planning."""
