"""The names of the parameter-free reducers that gati/cache/reduce.py builds.

Kept apart from torch: a cluster config names the online tier's reducer, and reading a config (deploy-local's status
and stop, the supervisor) should not import torch to check a name.
"""

REDUCERS: tuple[str, ...] = ("gap", "gapmax", "pool2", "pool4", "pool8")
