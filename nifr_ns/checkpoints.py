"""Checkpoint compatibility with torch >= 2.6.

torch now loads checkpoints with ``weights_only=True``; nerfstudio's loaders (``ns-viewer``,
``ns-eval``, ``ns-render``, resume) call ``torch.load`` without arguments, and its
checkpoints hold numpy scalars (learning rates from its numpy schedulers), which the safe
unpickler refuses (nerfstudio issue 3683). Allowing exactly those numpy types keeps the
safe loader on and makes our checkpoints load through nerfstudio's own tools, without
editing site-packages. Called when the model module is imported, which nerfstudio does
while reading a nifr ``config.yml``, before it loads the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


def numpy_scalar_globals() -> list:
    """The numpy objects a pickled numpy scalar refers to."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [scalar, np.dtype, *dtypes]


def allow_numpy_scalars() -> None:
    """Let ``torch.load(weights_only=True)`` read numpy scalars (no-op on torch without the allow-list)."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:
        add_safe_globals(numpy_scalar_globals())
