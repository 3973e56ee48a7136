"""The fleet verifier service (``attest fleet serve``): registered nodes appraised continuously.

- ``config``: the ``ATTEST_FLEET_*`` environment under the options, as one ``FleetSettings``;
- ``model``: what the fleet knows of one node (``NodeRow``, its ``NodeStatus``), free of SQL;
- ``store``: the fleet's state (nodes, enrollments, results, leases) in SQLite or PostgreSQL;
- ``http``: a lean keep-alive HTTP/1.1 client for the node API (the poller's hot path);
- ``appraiser``: the appraisal seam (``attest.appraisal.appraise``, or a quote-only fallback);
- ``enrollment``: enrolling nodes and host + guest pairs (``attest.verifier.contact.enroll``: EK
  chain to the configured roots, credential activation; fails closed without ``tofu``);
- ``pairs``: what the fleet stores of a host + guest pair (the pair logic is
  ``attest.appraisal.pair``);
- ``signing``: the verifier key that signs every appraisal's EAR, served as a JWK set;
- ``poller``: the asyncio scheduler (due times, bounded concurrency, jitter, backoff, leases);
- ``webhooks``: HMAC-signed notifications of verdict changes, delivered at least once;
- ``outbox``: the webhook events waiting in the fleet's database (they survive restarts);
- ``rollout``: per-release rollout shares and embargo clocks;
- ``api``: the REST API, Prometheus metrics and the HTML page;

See docs/fleet.md.
"""
