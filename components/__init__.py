"""KFP components, one module per stage, each a few lines: the logic lives in `r1vflow.stages`.

Nothing is imported here, so a component process that only needs `runtime` does not load kfp's DSL.
"""
