"""What a worker computes: a config turned into a shard source (`experiment`: few-shot;
`optimizer_experiment`: learned optimizers; `stacked`: a population's members stacked, from a
PopulationSpec) behind the seam of `sources`, plus how a shard function runs (`compiled`: the
ExecutionPlan of train.compile; `chunking`: train.tasks_per_vmap). Imports core, config, members and
tasks; never distributed, driver or above."""
