"""Tests that start Ray, Ray Tune, an MLflow server or a Ray head node, or train for more than a few seconds."""
