"""Runtime plumbing: offline assets, CPU threads and sharing, speed switches, processes, checkpoints."""
