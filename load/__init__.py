"""Bounded purchase load with a lag/replica timeline: `python -m load.scale` (or load/scale.sh)."""
