"""A heurbench plug-in package: each module registers one component with `heurbench.register`."""
from lars_and_friends import fc_warmup, lars, study, wrn  # noqa: F401  (importing registers them)
