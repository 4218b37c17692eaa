"""Runtime plumbing: offline assets, CPU threads and sharing, speed, processes, checkpoints, time budgets."""
