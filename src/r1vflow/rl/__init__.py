"""Reinforcement learning (R1V2 GRPO): pure loss/advantage cores (``core``), reward functions
(``rewards``) and the Selective Sample Buffer (``ssb``)."""
