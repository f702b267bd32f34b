"""Every explicit limit of the wire protocol, in one place, with units in the names.

docs/protocol.md quotes these numbers; change them here and there together.
"""

PROTOCOL_VERSION = 1

# A node id is what an operator types and what appears in MQTT topics: short, lower case.
# (\Z, not $: Python's $ also matches before a trailing newline.)
NODE_ID_PATTERN = "^[a-z0-9][a-z0-9-]{0,31}\\Z"
NODE_ID_MAX_LEN = 32

# A service name (relay, liveness, ...) follows the same rule as a node id.
SERVICE_NAME_PATTERN = NODE_ID_PATTERN

# One ingest frame (or one MQTT payload) never exceeds this; larger frames are rejected unread.
MAX_FRAME_BYTES = 65536
# A bus frame carries up to MAX_BATCH_RECORDS records republished by the relay, so it may be
# larger than an ingest frame; subscribers refuse anything beyond this.
MAX_BUS_FRAME_BYTES = 4 * MAX_FRAME_BYTES
# A batch carries at most this many node records.
MAX_BATCH_RECORDS = 256

# boot_id is a random non-zero unsigned 32-bit number chosen at every boot.
BOOT_ID_MAX = 2**32 - 1
# seq and ts_ms stay exactly representable in JSON doubles.
SEQ_MAX = 2**53 - 1
TS_MS_MAX = 2**53 - 1

CPU_PCT_MAX = 100.0
QUEUE_MAX = 1_000_000
LOAD_FACTOR_MAX = 1000.0
FREE_HEAP_MAX_BYTES = 2**32 - 1
RSSI_MIN_DBM = -127
RSSI_MAX_DBM = 0
FIRMWARE_VERSION_MAX_LEN = 32
REASON_MAX_LEN = 64
# A node's heartbeat interval, as it announces it in its hello.
HEARTBEAT_INTERVAL_MIN_MS = 50
HEARTBEAT_INTERVAL_MAX_MS = 600_000

# Tasks (protocol/tasks.py).
TASK_ID_MAX_LEN = 64
TASK_PAYLOAD_MAX_LEN = 256
TASK_OUTPUT_MAX_LEN = 128
TASK_COST_MAX_MS = 60_000
TASK_ARG_MAX = 1_000_000
MAX_OFFER_TASKS = 32
