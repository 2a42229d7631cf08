"""Keep Python's cyclic garbage collector off the request path.

A serving process holds a large, long-lived object graph (the modules it
imported, torch, the loaded models) and creates many short-lived objects
per request. CPython's oldest-generation collection walks the whole graph:
in a front end with torch imported that is a 60-110 ms pause of the event
loop, every few seconds under load, and every request in flight waits it
out (measured: one such pause was the whole p99 of a 10 s overload run).
`gc.freeze()` moves every object alive now into a permanent generation that
collections skip, so they only walk what was created since.

`settle()` once start-up has loaded what the process will keep (collect
first, so start-up's garbage is not frozen with it); `keep()` after a
later load (a reload, another model), which freezes without the pause of
a full collection. Frozen objects that become garbage are still reclaimed
by reference counting; only reference cycles among them would be kept, so
after an unload `settle()` thaws, collects once (one pause per unload, not
one every few seconds) and freezes again.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect everything once (frozen objects included), then exempt what is
    left from later collections: at the end of start-up, and after an unload,
    whose reference cycles only a full collection frees."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def keep() -> None:
    """Exempt everything alive now (a model just loaded) from later collections, without a collection."""
    gc.freeze()
