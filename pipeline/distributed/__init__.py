"""Where shards run: the in-process and Ray backends (`backends`), the Ray shard workers
(`workers`) and the Ray head on this machine that runs join (`head`, kept by `metatrain cluster`).
Runs the shard sources it is handed and knows nothing of what they compute (no population import).
Imports core, config and shards only."""
