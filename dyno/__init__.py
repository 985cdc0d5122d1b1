"""dyno: adaptive device-to-cloud split inference for CNNs (DynO, arXiv 2104.09949).

The curated public API; everything else is internal and may change.
"""

from dyno import errors
from dyno.errors import DynoError

__all__ = ["errors", "DynoError"]
__version__ = "0.1.0"
