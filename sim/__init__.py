"""MuJoCo dual-arm simulation: scenes, tasks, scripted experts, recording and evaluation (the `sim` extra)."""
