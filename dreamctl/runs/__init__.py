"""The run registry and a run's life: folders, run.yaml, checkpoints, train and resume, system setup."""
