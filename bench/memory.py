"""Peak resident memory of a benchmark stage, shared by the bench scripts (Linux /proc)."""

from __future__ import annotations

import threading
import time


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak RSS from construction to :meth:`stop`: ``VmHWM`` after resetting it through
    ``/proc/self/clear_refs``, or, where that is not allowed, a 10 ms RSS poller."""

    def __init__(self) -> None:
        self.baseline_kb = status_kb("VmRSS")
        self.method = "clear_refs"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            if status_kb("VmHWM") > self.baseline_kb * 1.05 + 1024:
                raise OSError("VmHWM was not reset")
        except OSError:
            self.method = "poll_10ms"
        self._max_kb = self.baseline_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max_kb = max(self._max_kb, status_kb("VmRSS"))
            time.sleep(0.01)

    def stop(self) -> dict:
        """``peak_mb`` (over the baseline), ``peak_rss_mb``, ``baseline_rss_mb``, ``end_rss_mb``."""
        self._stop.set()
        self._thread.join()
        peak_kb = status_kb("VmHWM") if self.method == "clear_refs" else self._max_kb
        peak_kb = max(peak_kb, self._max_kb)
        return {
            "peak_mb": round((peak_kb - self.baseline_kb) / 1024, 1),
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "baseline_rss_mb": round(self.baseline_kb / 1024, 1),
            "end_rss_mb": round(status_kb("VmRSS") / 1024, 1),
            "memory_method": self.method,
        }
