"""The outer loop on the driver: the trainer (`trainer`) and populations (`population`, whose
whole-iteration step is `population_step`), the schedulers that decide on a population's members
(`schedulers/`: halving, PBT; they import nothing but each other), the method families
(`families`: the one family table), the outer step (`meta_step`), the evaluation plans
(`evaluation`), checkpoints (`checkpoint`) and the run-directory layout (`run_dir`). Imports core,
config, members, shards, distributed and plots; never serve, tracking or sweeps."""
