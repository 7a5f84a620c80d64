"""heurbench checkpoint side: what the studies compute from saved checkpoints.

activations (layer outputs over fixed inputs), cca (CCA, SVCCA, PWCCA, CKA, layer heatmaps),
connectivity (curves between checkpoints, barriers), landscape (loss planes), sharpness
(Hessian eigenvalue, trace), geometry (distances, angles, interpolation), swa, frequency
(filtered test sets), plots, results (Parquet rows), checkpoints (loading), cli (`heurbench analyze`).
"""
