"""What runs a task: execute (the component body), launch (torchrun), trainjob, worker specs, cluster settings, images."""
