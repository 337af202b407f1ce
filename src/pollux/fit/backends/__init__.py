"""Back-ends of the closed-form calls, behind one interface (`Backend`): in
memory on one device (`Local`), sharded over devices (`Sharded`), or on the
chunks of Dask arrays (`Dask`). `select` picks one for a checked `Plan`
(`pollux.fit._plan`)."""

from __future__ import annotations

from typing import Any

from ._base import Backend, Final, Prepared
from ._memory import AXIS, Local, Sharded, check_devices

__all__ = [
    "AXIS",
    "Backend",
    "Final",
    "Local",
    "Prepared",
    "Sharded",
    "check_devices",
    "select",
]


def select(plan: Any) -> Backend:
    """The back-end of ``plan``: `Sharded` over its device mesh, `Dask` for
    Dask-backed data (on the default distributed client's workers, if there is
    one), else `Local`."""
    if plan.mesh is not None:
        return Sharded(plan.mesh)
    if plan.lazy:
        from ._dask import Dask, client  # imports dask only when it is used

        return Dask(client())
    return Local()
