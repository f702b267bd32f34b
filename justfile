# shoal's commands. `./just RECIPE` bootstraps .venv first; plain `just` works once it exists.
set shell := ["bash", "-eu", "-o", "pipefail", "-c"]
export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")

# List the recipes
default:
    @just --list

# Start the cluster (services, broker + shim, 8 simulated nodes, 2 emulated boards) and, on a
# terminal, the console. Two hot spots so delegation shows: the boards (16 slots against a
# simulated node's 64) take work only once the simulated peers fill. `--hot-spots 0` for none.
# [continue]: Ctrl-C is how these stop; a clean stop (exit 0) is not an error to `just`.
[continue]
up *ARGS:
    shoal up --hot-spots 2 {{ARGS}}

# The operator console on a running cluster (pass --readonly to watch only)
[continue]
tui *ARGS:
    shoal tui {{ARGS}}

# Run the test suite (slow soak tests excluded; they run in `just bench`)
test *ARGS:
    pytest -q {{ARGS}}

# ruff (lint and format check) and mypy
lint:
    ruff check .
    ruff format --check .
    mkdir -p .typecheck/shoal
    for d in protocol services tui firmware bench; do ln -sfn "../../$d" ".typecheck/shoal/$d"; done
    MYPYPATH=.typecheck mypy --namespace-packages --explicit-package-bases -p shoal.protocol -p shoal.services -p shoal.bench -p shoal.tui

# Format the code
fmt:
    ruff format .
    ruff check --fix .

# Benchmarks: each prints JSON with its baseline measured in the same run
bench *ARGS:
    python bench/framing.py --json {{ARGS}}
    python bench/relay_throughput.py --json {{ARGS}}
    python bench/relay_restart.py --json {{ARGS}}
    python bench/liveness.py --json {{ARGS}}
    python bench/tui.py --json {{ARGS}}
    python bench/delegation.py --json {{ARGS}}
    python bench/ledger.py --json {{ARGS}}
    python bench/chaos_library.py --json {{ARGS}}
    python bench/mqtt_path.py --json {{ARGS}}
    python bench/nodecore_heap.py --json
    python bench/ota.py --json
    pytest -q -m slow || [ $? -eq 5 ]  # 5: no slow test collected yet
    SHOAL_CHAOS_SEEDS=1,2,3 pytest -q tests/test_chaos_library.py

# Run a fault-injection scenario (its own cluster; exit code = verdict; see docs/scenarios.md)
[continue]
chaos FILE *ARGS:
    shoal chaos run {{FILE}} {{ARGS}}

# Cluster status from the relay's snapshot
[continue]
status *ARGS:
    shoal status {{ARGS}}
