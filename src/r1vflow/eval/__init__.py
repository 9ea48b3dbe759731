"""Evaluation: grading of model responses (``grading``) and benchmark runs."""
