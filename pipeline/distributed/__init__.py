"""Where shards run: the in-process and Ray backends (`backends`) and the Ray shard workers
(`workers`). Runs the shard sources it is handed and knows nothing of what they compute (no
population import). Imports core, config and shards only."""
