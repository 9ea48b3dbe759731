"""GitOps-triggered retraining: plan, apply, cluster render, state and claims (docs/gitops.md)."""
