"""shoal services: runtime, relay, simulated fleet, supervisor and the `shoal` command."""
