"""Small internals shared by every part.

- :mod:`.lifecycle`: the state enum and the async/sync resource bases every part
  subclasses, and the one interface owners close parts through.
- :mod:`.validate`: argument validators that name the argument (functions and attrs).
- :mod:`.redact`: the one credential masker (URLs, query passwords, DSN strings).
- :mod:`.lazy`: the lazy-export helper of the packages' ``__init__`` modules.
- :mod:`.stats`: the one percentile formula of every ``stats()``.

Nothing here imports an optional dependency or another part of leadperf but ``errors``.
"""
