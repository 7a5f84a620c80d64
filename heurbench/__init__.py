"""The command-line layer above harness, analysis and slurm: the `heurbench` console script and the quickstart."""
