"""Using a trained run: load it and adapt to new tasks (`adaptation`), MLflow pyfunc serving
(`serving`, `served_model`), support/query files (`episode_files`), evaluation on other data
(`eval_elsewhere`). Imports the wings up to driver; never tracking or sweeps."""
