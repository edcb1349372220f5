"""Say on stderr, once per process, that rnnkern's Numba kernels are being compiled.

On a fresh install (or an empty ``NUMBA_CACHE_DIR``) the first call of a kernel compiles
it, which takes seconds to tens of seconds; later processes load it from Numba's cache in
milliseconds. Without a word that wait looks like a hang. Numba announces every compile
(after a cache miss only) as a ``numba:compile`` event; the listener here prints one line
when the first of rnnkern's own functions starts compiling. (No line at the end: a run
compiles in several bursts, its forward first and its backward at the first gradient.)
"""

from __future__ import annotations

import sys

from numba.core import event

_PACKAGE = __name__.split(".")[0]


class _Notice(event.Listener):
    def __init__(self) -> None:
        self.said = False

    def on_start(self, ev: event.Event) -> None:
        if not self.said and _ours(ev):
            self.said = True
            print(f"{_PACKAGE}: compiling the Numba kernels this run needs (once: later runs "
                  "load them from the cache) ...", file=sys.stderr, flush=True)

    def on_end(self, ev: event.Event) -> None:
        pass


def _ours(ev: event.Event) -> bool:
    fn = getattr(ev.data.get("dispatcher"), "py_func", None)
    return getattr(fn, "__module__", "").startswith(_PACKAGE + ".")


_listener: _Notice | None = None


def announce() -> None:
    """Register the listener (idempotent; each module with kernels calls it at import)."""
    global _listener
    if _listener is None:
        _listener = _Notice()
        event.register("numba:compile", _listener)
