"""heurbench checkpoint side: what the studies compute from saved checkpoints.

Analyses are functions of models/checkpoints and data that return DataFrames: cca (CCA, SVCCA, PWCCA,
CKA, layer heatmaps), connectivity (curves between checkpoints, barriers), landscape (loss planes),
sharpness (Hessian eigenvalue, trace), geometry (distances, angles, interpolation), swa, frequency
(filtered test sets); activations (layer outputs over fixed inputs), evaluation (batches, BN), plots,
results (Parquet rows), loading (checkpoints, models, data); cli (`heurbench analyze`) and report
(`heurbench report`, one recipe per study in studies/) are thin callers of them.
"""
