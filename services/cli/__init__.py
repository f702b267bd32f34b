"""The `shoal` command: one module per command group, put together in main.py.

shoal up [--headless] [--nodes N] [--config FILE]   start the cluster (and the console on a TTY)
shoal tui [--readonly] [--config FILE]              the operator console on a running cluster
shoal run SERVICE [--config FILE]                   run one service in this process
shoal sim [--nodes N] [--config FILE]               run a simulated fleet
shoal status [--json] [--config FILE]               one row per node with its state
shoal bench relay|liveness|tui|delegation|...|shards [--json] [--quick]   benchmarks

up, run and sim take the fleet's workload flags too: --rate, --hot-spots, --hot-factor,
--node-rate, --burst (see `shoal sim --help`).
shoal config [--config FILE]                        print the effective configuration
"""
