"""Task handlers: what a task of each kind computes, for real, on the node that runs it.

``run(kind, arg, payload) -> (ok, output, error)``. The CPU time a task takes is its
``cost_ms`` in the engine's simulated time; the handler produces the real output when that
time is up, so a result can be checked anywhere.

- sha256: ``arg`` rounds (at least one): the first hashes the payload's UTF-8 bytes, each
  later one the previous 32-byte digest; output the last digest in hex (64 characters).
- compute: ``arg`` iterations of the ZX81 linear congruential generator
  x = (75 * x + 74) mod 65537, seeded from the payload; output str(x). Every intermediate
  stays a small int on a 32-bit MicroPython (no big-int allocation per step).
- io_wait: a wait of ``arg`` ms; its cost is the task's cost_ms in simulated time, so the
  handler itself returns "" at once.

An unknown kind, or a handler that raises, gives (False, "", reason): the task completes with
an error result instead of stopping the node.
"""

import binascii
import hashlib

OUTPUT_MAX = 128  # protocol limits.TASK_OUTPUT_MAX_LEN
ERROR_MAX = 64  # protocol limits.REASON_MAX_LEN


def sha256_rounds(arg, payload):
    data = payload.encode()
    rounds = arg if arg > 0 else 1
    for _ in range(rounds):
        data = hashlib.sha256(data).digest()
    return binascii.hexlify(data).decode()


def compute(arg, payload):
    x = 1
    for ch in payload.encode():
        x = (x * 31 + ch) % 65537
    for _ in range(arg):
        x = (75 * x + 74) % 65537
    return str(x)


def io_wait(arg, payload):
    return ""


HANDLERS = {"sha256": sha256_rounds, "compute": compute, "io_wait": io_wait}


def run(kind, arg, payload):
    """Run one task: (ok, output, error); never raises."""
    fn = HANDLERS.get(kind)
    if fn is None:
        return False, "", "unknown kind"
    try:
        out = fn(arg, payload)
    except Exception as err:  # a bad task must not stop the node
        return False, "", (type(err).__name__ + ": " + str(err))[:ERROR_MAX]
    return True, out[:OUTPUT_MAX], ""
