"""The outer loop on the driver: one run's record (`record`: its directory, status, checkpoints and
hooks; `hooks`: what observes it), the trainer that drives one (`trainer`), populations that drive
one per member (`population`, over `stacked_runs`; the whole-iteration step: `population_step`),
the schedulers that decide on a population's members (`schedulers/`: halving, PBT; they import
nothing but each other), the method families (`families`: the one family table), the outer step
(`meta_step`), the evaluation plans (`evaluation`), checkpoints (`checkpoint`) and the
run-directory layout (`run_dir`). Imports core, config, members, shards, distributed and plots;
never serve, tracking or sweeps."""
