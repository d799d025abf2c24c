"""The outer loop on the driver: the trainer (`trainer`) and populations (`population`, with PBT's
decisions in `pbt`), the outer step (`meta_step`), the evaluation plans (`evaluation`), checkpoints
(`checkpoint`) and the run-directory layout (`run_dir`). Imports core, config, shards, distributed
and plots; never serve, tracking or sweeps."""
