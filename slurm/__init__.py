"""SLURM side of heurbench: submitit launcher (`launch.py`), sbatch templates, Ray-on-SLURM bootstrap."""
