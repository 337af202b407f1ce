"""Stand-ins for the core tests: the least of a data set that `pollux.testing`'s
dense references read (not a test module)."""

from __future__ import annotations

from types import SimpleNamespace


class ArrayData:
    """What `pollux.testing` reads of a data set: ``len`` and ``[name].data/.err``."""

    def __init__(self, arrays):
        self.arrays = arrays

    def __len__(self):
        return next(iter(self.arrays.values()))[0].shape[0]

    def __getitem__(self, name):
        y, err = self.arrays[name]
        return SimpleNamespace(data=y, err=err)
