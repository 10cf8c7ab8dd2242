"""Chrome for the pool, one module per concern.

- ``options``: the flags and ``ChromeOptions`` every pooled Chrome starts with.
- ``ports``: process-wide TCP port reservations.
- ``process``: launching chromedriver and Chrome, and tearing them down.
- ``hostdeath`` and ``watchdog``: browsers die with their host, whatever ends it.
- ``devtools``: the browser-level DevTools link.
- ``isolation``: one class per way of keeping tasks apart, behind one interface.
- ``instance``: one pooled Chrome, built from the above.
- ``config``: the pool's arguments, checked once.
- ``limiters``: the async gates of ``session_async``, one pair per event loop.

The pool (``leadperf.pool``) owns lending: which instance is busy, for which task, how
many tasks it served and when it was last used.
"""

from __future__ import annotations

__all__: list[str] = []
