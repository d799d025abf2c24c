"""metatrain: distributed gradient-based meta-training. Wings, from the bottom up, by where their
code runs (each may import only the wings below it; tests/unit/test_structure.py enforces it):

    core/         adaptation math, networks, update rules            (imports tasks only)
    storage       whole-file writes that a full disk cannot leave half done
    config        the experiment-config schema (core's registries read where a config is checked)
    members       a population as one config plus a member table (PopulationSpec)
    shards/       what a worker computes: experiments, compile, chunk timing
    distributed/  where shards run: backends, Ray workers, the local head runs join
    driver/       the outer loop: trainer, populations, their schedulers, families, checkpoints, run files
    serve/        using a trained run: load, adapt, pyfunc serving, episode files, other data
    installed_packages  which distribution provides each module (cached for MLflow's model logging)
    tracking      MLflow (on a thread of its own)
    sweeps/       Ray Tune sweeps: spec, driver, trial, record, report
    jobs, local_cluster, cli   submitting to a cluster; a Ray head on 127.0.0.1; the command line
"""
