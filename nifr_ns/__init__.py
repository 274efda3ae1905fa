"""nifr-ns: neural implicit feature fields for camera pose refinement, as a nerfstudio plugin.

Kept import-light on purpose: nerfstudio imports every registered plugin when any
``ns-*`` command starts, so heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
