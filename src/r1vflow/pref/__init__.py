"""Preference optimisation (R1V2's Mixed Preference Optimization): the pure loss, the BCO shift,
preference pairs built from the current model's samples, and the MPO trainer (its loss step
on r1vflow.train.loop)."""
