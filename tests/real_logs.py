"""Where the real development logs are (kept outside the repository; see
``../shared/data/real/README.md``): ``DRIVESTREAM_REAL_LOGS``, else beside the checkout,
else the shared workspace. Tests that need them skip with this reason when none exists."""

from __future__ import annotations

import os
from pathlib import Path

CANDIDATES = [
    os.environ.get("DRIVESTREAM_REAL_LOGS", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"),
    "/work/shared/data/real",
]
REAL = next((Path(c) for c in CANDIDATES if c and (Path(c) / "README.md").exists()), None)
MISSING = f"real dev logs not found in {CANDIDATES}"
