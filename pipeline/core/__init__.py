"""The mathematics: networks (`learners`), the inner loop and a shard's meta-gradient batched over
tasks with torch.func (`meta_batch`), and the update-rule registry (`rules/`). Runs wherever a
shard runs. Imports torch and `tasks` only: never the config schema or any wing above."""
