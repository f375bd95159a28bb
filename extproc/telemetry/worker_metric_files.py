"""The workers' metric files: prometheus_client's multiprocess directory, emptied at start.

Under ``serve --workers N`` every worker keeps its counters and histograms in files
named ``<kind>_<pid>.db`` (``counter_4711.db``, ``gauge_livemin_4711.db``) under
``telemetry.metrics.multiprocess_dir``, and the supervisor's page merges every ``*.db``
file there. Files of an earlier run would add its counts to this one's, so a start
removes them, and only them: the directory itself stays, so it may be a volume's
mount point (which cannot be removed: ``EBUSY``), and whatever else it holds is not
the gateway's to delete. Before, the supervisor removed the whole tree and made it
again: on a mount point it deleted everything in it and then failed to start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# prometheus_client's names: the metric type, with a gauge's multiprocess mode, and the
# pid of the process that wrote it (prometheus_client/values.py).
_WORKER_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_\d+\.db")


class ForeignMetricFilesError(Exception):
    """``*.db`` entries the gateway did not write: the merged page would read them."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.names = names
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        super().__init__(
            f"{directory} holds {shown}, not metric files of the gateway's workers; the "
            "merged /metrics page would read every *.db file there: give the workers' "
            "metric files a directory of their own"
        )


def empty(directory: Path) -> None:
    """Make ``directory`` (created if missing) hold no worker metric file.

    Raises ``OSError`` when it cannot be made or emptied, and
    ``ForeignMetricFilesError`` (having removed the gateway's own files) when another
    ``*.db`` entry is there."""
    directory.mkdir(parents=True, exist_ok=True)
    foreign = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(".db"):
                continue  # not read by the merge: not the gateway's concern
            if _WORKER_FILE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink()
            else:
                foreign.append(entry.name)
    if foreign:
        raise ForeignMetricFilesError(directory, foreign)
