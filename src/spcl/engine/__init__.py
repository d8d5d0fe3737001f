"""Engineering: checkpoints, optimisers and schedules, devices, the training loop."""
