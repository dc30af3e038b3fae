"""The task-free engine: model loading, tiled prediction, the training loop with hooks,
evaluation plumbing and plots. It never imports a task; tasks hand it their hooks."""
