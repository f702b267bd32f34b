"""The fault injector: a scenario file in, a verdict with numbers out.

- ``scenario``: the TOML schema and its validation (exit 4 names the file, entry and field);
- ``plan``: targets and the fault timeline, resolved from the seed (same seed, same plan);
- ``actuators``: applying and healing each fault kind (the sim's fault op, the supervisor);
- ``observer``: the recorded history (membership events, metric samples, fault times);
- ``checks``: tolerances, steady-state probes and expectations over the history;
- ``runner``: one run, from the cluster's start to its verdict and rollback;
- ``report``: the JSON report and its Markdown summary;
- ``fault_proxy``: a fault proxy on one service-to-service link (partitions between services).

It binds nothing of its own but the fault proxies it starts (bus XPUB, ctl ROUTER, on free
loopback ports); it trusts the scenario file only after validating it, and the cluster's
answers only as measurements.

docs/scenarios.md is the reference for scenario files.
"""
