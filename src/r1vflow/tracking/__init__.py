"""MLflow: stage and parent runs (`runs`), model lineage (`lineage`), the champion gate
(`promotion`) and the one way to get a client (`client`)."""
