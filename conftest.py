"""Suite-wide pytest hooks (tests/ and the doctests of src/pollux).

Every XLA program compiled on the CPU stays mapped into the process (its code and
data, a few memory mappings per kernel) for as long as JAX caches it, and a
process may hold at most ``vm.max_map_count`` mappings (65,530 by default on
Linux). A serial run of the whole suite compiles thousands of programs: near the
end it ran out of mappings, XLA's JIT failed to map a kernel ("Failed to
materialize symbols", ENOMEM), and the process died with a segmentation fault
while that error was being raised. The caches are therefore cleared after each
test file (its programs are not reused by the next one).
"""

from __future__ import annotations

import gc

import jax


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None or nextitem.path != item.path:
        jax.clear_caches()
        gc.collect()
