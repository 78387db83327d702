"""Label Studio feature flags labeler relies on (set in Label Studio's environment; README "Scaling out")."""

from __future__ import annotations

# Memory-efficient predictions import (1.23): imports no longer recount the project's tasks, about 827
# predictions/s instead of about 43/s and falling as the project grows.
FAST_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
