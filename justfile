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

# Run the test suite (slow soak tests excluded; they run in `just bench`): a worker per
# file on SHOAL_TEST_JOBS processes (2; 0 runs in this process), since a test mostly waits
# on its cluster; a file stays in one worker, so its module fixtures run once.
test *ARGS:
    pytest -q -n {{env_var_or_default("SHOAL_TEST_JOBS", "2")}} --dist loadfile {{ARGS}}

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

# The long benchmarks run --quick here (their full runs alone take over 20 minutes: `just
# bench-full`). The hand-off tail: 10 quick delegation runs idle, 10 beside a CPU hog.
# Benchmarks (JSON with a same-run baseline each) into bench/report/, then its report.md
bench *ARGS:
    mkdir -p bench/report
    python bench/framing.py --json --save bench/report {{ARGS}}
    python bench/relay_throughput.py --json --save bench/report {{ARGS}}
    python bench/relay_restart.py --json --save bench/report {{ARGS}}
    python bench/liveness.py --json --quick --save bench/report {{ARGS}}
    python bench/tui.py --json --save bench/report {{ARGS}}
    python bench/delegation.py --json --quick --runs 10 --save bench/report {{ARGS}}
    python bench/delegation.py --json --quick --runs 10 --hog 1 --save bench/report {{ARGS}}
    python bench/ledger.py --json --save bench/report {{ARGS}}
    python bench/chaos_library.py --json --quick --save bench/report {{ARGS}}
    python bench/mqtt_path.py --json --quick --save bench/report {{ARGS}}
    python bench/cost.py --json --quick --save bench/report {{ARGS}}
    python bench/scale.py --json --quick --save bench/report {{ARGS}}
    python bench/shards.py --json --quick --save bench/report {{ARGS}}
    python bench/nodecore_heap.py --json --save bench/report
    python bench/ota.py --json --save bench/report
    pytest -q -m slow || [ $? -eq 5 ]  # 5: no slow test collected yet
    SHOAL_CHAOS_SEEDS=1,2,3 pytest -q tests/test_chaos_library.py
    shoal bench report bench/report

# Every benchmark at full length (about an hour on 2 cores), then the report
bench-full *ARGS:
    mkdir -p bench/report
    python bench/delegation.py --json --quick --runs 10 --save bench/report
    python bench/delegation.py --json --quick --runs 10 --hog 1 --save bench/report
    # after the tail, whose first run it replaces as bench/report/delegation.json
    for b in framing relay_throughput relay_restart liveness tui delegation ledger chaos_library mqtt_path cost scale shards; do python bench/$b.py --json --save bench/report {{ARGS}}; done
    python bench/nodecore_heap.py --json --save bench/report
    shoal bench report bench/report

# Rebuild bench/report/report.md and its plots from the saved JSON (runs nothing)
bench-report DIR="bench/report":
    shoal bench report {{DIR}}

# Run a fault-injection scenario (its own cluster; exit code = verdict; see docs/scenarios.md)
[continue]
chaos FILE *ARGS:
    shoal chaos run {{FILE}} {{ARGS}}

# Cluster status from the relay's snapshot
[continue]
status *ARGS:
    shoal status {{ARGS}}
