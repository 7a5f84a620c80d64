"""heurbench training side: config, data, models, optimisation, training loop, sweeps."""
