"""The names of the places work can run, in one place.

A module of its own so the command line can offer them without importing
the pools.
"""

# What auto chooses between, and what backend= may force.
LOCAL_BACKENDS = ("inline", "thread", "process")
# Every backend= value: auto decides; dask runs on a Dask cluster.
BACKENDS = ("auto", *LOCAL_BACKENDS, "dask")
