"""The fleet verifier service (``attest fleet serve``): registered nodes appraised continuously.

- ``store``: the fleet's state (nodes, enrollments, results, leases) in SQLite or PostgreSQL;
- ``http``: a lean keep-alive HTTP/1.1 client for the node API (the poller's hot path);
- ``appraiser``: the appraisal seam (``attest.appraisal.appraise``, or a quote-only fallback);
- ``poller``: the asyncio scheduler (due times, bounded concurrency, jitter, backoff, leases);
- ``webhooks``: HMAC-signed notifications of verdict changes;
- ``rollout``: per-release rollout shares and embargo clocks;
- ``api``: the REST API, Prometheus metrics and the HTML page;
- ``sim``: many simulated nodes (fake TPMs) behind one lightweight HTTP server, for the
  benchmark and tests.

See docs/fleet.md.
"""
