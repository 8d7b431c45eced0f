"""The multiprocess metric files of dead workers (no metric defined here: gunicorn's master
imports this module, and a metric defined in the master would write files of its own)."""

from __future__ import annotations

import glob
import os


def archive_dead_worker(pid: int, directory: str) -> None:
    """Fold a dead worker's counter and histogram files into one archive file per type and
    delete them (gunicorn's ``child_exit``, in the master: the only writer of the archive).

    The totals stay (a counter must not go down when a worker is recycled), but the number
    of files ``/metrics`` reads stays at live workers + 1 instead of growing with every
    recycled worker. Live gauges of the pid are removed by ``mark_process_dead``.
    """
    from prometheus_client.mmap_dict import MmapedDict

    for kind in ("counter", "histogram", "summary"):
        path = os.path.join(directory, f"{kind}_{pid}.db")
        if not os.path.exists(path):
            continue
        archive = MmapedDict(os.path.join(directory, f"{kind}_archive.db"))
        try:
            for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                total, _ = archive.read_value(key)
                archive.write_value(key, total + value, timestamp)
        finally:
            archive.close()
        os.remove(path)


def metric_files(directory: str) -> list[str]:
    """The metric files ``/metrics`` reads (for tests and operators)."""
    return sorted(glob.glob(os.path.join(directory, "*.db")))
