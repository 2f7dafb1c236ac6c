"""CLI commands, one module per concern; each defines ``register(app)`` and :mod:`prefheads.cli` calls it.

``fit``, ``demo``, ``layers``, ``evaluate`` (eval), ``infer`` (rerank, serve), ``score``,
``recipes`` (run) and ``zoo`` (zoo, tasks); :mod:`._common` holds what several share.
"""
