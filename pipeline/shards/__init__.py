"""What a worker computes: a config turned into a shard source (`experiment`: few-shot;
`optimizer_experiment`: learned optimizers; `population`: stacked members), plus the execution
policies of a shard function (`compiled`: train.compile; `chunking`: train.tasks_per_vmap).
Imports core, config and tasks; never distributed, driver or above."""
