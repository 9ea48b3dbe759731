"""Benchmark commands: our GRPO step vs TRL (`grpo`), our object store vs the plain minio client (`artifacts`)."""
