"""Tests that start no Ray, Tune or MLflow server and run no training (`make test-fast`)."""
