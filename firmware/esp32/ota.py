"""Over-the-air updates, pulled by the board: chunk by chunk, checked, staged, switched.

The OTA service (services/ota) offers a version on ``shoal/v1/<node_id>/ota/down``; the
board asks for one chunk at a time on ``.../ota/up`` and the service answers each request
from the bundle, remembering nothing (docs/protocol.md section 13 has every payload). So
every resume is the board's: after a broker or service restart it asks again when its
request times out, and after a power cut it finds its progress on flash.

- The offer is the plan: the version, the chunk size, and each file with its size and the
  manifest's sha256. The board checks the flash has room for all of it first.
- Each chunk carries the sha256 of its bytes; one that does not match, or is not the chunk
  asked for, is refused (counted) and asked for again. Each file's bytes are hashed as they
  are written, and the file counts only when the whole matches the manifest's sha256.
- Files are staged beside the running ones (``X.new``) and the plan kept in
  ``ota_plan.json``: the size of a staged file is how far it got.
- When every file is verified: the pending marker, the switch, a reset. otaboot.py counts the
  trial boots and rolls back by itself (an import error at once); this module confirms the
  new version once its hello was acked and it has run ``probation_ms``, or rolls back if no
  ack came within ``probation_max_ms``.

RAM: one chunk (1 KB by default) and one hash at a time; nothing of a file stays in RAM.
"""

import json
import os

import otaboot as boot

try:
    import hashlib
    from binascii import hexlify
except ImportError:  # a build without them cannot update over the air
    hashlib = None

PLAN = "ota_plan.json"
REQUEST_TIMEOUT_MS = 1500  # a chunk not answered by then is asked for again
REQUEST_TIMEOUT_MAX_MS = 8000  # ... with the wait doubling up to this while none come
STATUS_EVERY_MS = 2000  # progress while a transfer runs
IDLE_STATUS_EVERY_MS = 30000
SPACE_MARGIN = 4096  # flash kept free beyond the staged files
SWITCH_RESET_MS = 300  # after the switch, time for the status to leave before the reset


def sha_hex(h):
    return hexlify(h.digest()).decode()


def _dirs(path):
    """Make the directories of path (lib/nodecore/...) that do not exist yet."""
    parts = path.split("/")[:-1]
    at = ""
    for p in parts:
        at = at + "/" + p if at else p
        if not boot.exists(at):
            os.mkdir(at)


def free_flash(statvfs=None):
    """Free bytes on the filesystem, or None where the port cannot say."""
    try:
        st = (statvfs or os.statvfs)("/")
        return st[0] * st[4]  # f_bsize * f_bavail
    except (AttributeError, OSError):
        return None


class OtaClient:
    def __init__(
        self,
        node_id,
        fw,
        publish,
        now_ms,
        acked=None,
        reset=None,
        statvfs=None,
        probation_ms=5000,
        probation_max_ms=120000,
        before_reset=None,
    ):
        self.node_id = node_id
        self.fw = fw  # the running version
        self.publish = publish  # (topic, payload bytes) -> sent
        self.now_ms = now_ms
        self.acked = acked  # () -> messages of this boot the relay acked
        self._reset = reset or boot.reset
        self.before_reset = before_reset  # e.g. the node's goodbye: a planned reboot says so
        self.statvfs = statvfs
        self.probation_ms = probation_ms
        self.probation_max_ms = probation_max_ms
        self.up_topic = "shoal/v1/%s/ota/up" % node_id
        self.state = "idle"
        self.detail = ""
        self.plan = None
        self.fi = 0  # the file being fetched, and where in it
        self.off = 0
        self.hasher = None
        self.asked_ms = None
        self.wait_ms = REQUEST_TIMEOUT_MS
        self.status_ms = None  # when the last status went (None: send one now)
        self.reset_at = None
        self.stats = {"chunks": 0, "bytes": 0, "bad_chunks": 0, "stale": 0, "retries": 0,
                      "bad_msgs": 0, "bad_files": 0}
        now = now_ms()
        self.started_ms = now
        self.marker = boot.pending()
        if self.marker is not None:
            if self.marker.get("version") == fw:
                self.state = "trial"
            else:  # the switch did not take: running another version than the marker's
                boot.rollback(self.marker, "running %s, not %s" % (fw, self.marker.get("version")))
                self.marker = None
        elif hashlib is not None:
            plan = boot.read_json(PLAN)
            if plan is not None and plan.get("version") != fw:
                self._start(plan, now)  # a transfer cut by a reset or a power cut

    # --- what the service sends -------------------------------------------------------

    def on_message(self, payload):
        """One payload from ota/down: a chunk (b"K" + header + "\\n" + bytes) or JSON."""
        try:
            if payload[:1] == b"K":
                self._chunk(payload)
                return
            msg = json.loads(payload)
            kind = msg["kind"]
        except (ValueError, KeyError, TypeError, IndexError, MemoryError) as e:
            self.stats["bad_msgs"] += 1
            self.detail = "bad message: %r" % (e,)
            return
        except OSError as e:  # the flash refused a write: this update cannot go on
            self._discard()
            self._set("failed", "flash: %r" % (e,))
            return
        if kind == "ota_offer":
            self._offer(msg)
        elif kind == "ota_abort":
            if self.state in ("downloading", "failed"):
                self._discard()
                self._set("idle", "aborted by the service")
        self.status_ms = None  # answer with where we are

    def _offer(self, msg):
        version = msg.get("version")
        if self.state in ("trial", "switching") or version == self.fw:
            return
        last = boot.read_json(boot.RESULT)
        if last is not None and last.get("version") == version and last.get("result") == "rolled_back":
            return  # this version failed here once: its status says so, it is not taken again
        if self.state == "downloading" and self.plan["version"] == version:
            return
        if hashlib is None:
            self._set("failed", "no hashlib: cannot verify an update")
            return
        try:
            plan = {"version": version, "chunk": int(msg["chunk"]), "files": msg["files"]}
            for path, size, sha in plan["files"]:
                if not isinstance(path, str) or ".." in path or size < 0 or len(sha) != 64:
                    raise ValueError(path)
        except (KeyError, TypeError, ValueError) as e:
            self.stats["bad_msgs"] += 1
            self.detail = "bad offer: %r" % (e,)
            return
        if self.plan is not None:
            self._discard()
        need = sum(f[1] for f in plan["files"]) + SPACE_MARGIN
        free = free_flash(self.statvfs)
        if free is not None and free < need:
            self._set("failed", "no space: %d B needed, %d B free" % (need, free))
            return
        boot.write_json(PLAN, plan)
        self._start(plan, self.now_ms())

    # --- fetching -----------------------------------------------------------------------

    def _start(self, plan, now):
        """Begin, or resume from what is staged: the first file not whole and verified."""
        self.plan = plan
        self.fi = 0
        self.off = 0
        self.hasher = None
        files = plan["files"]
        while self.fi < len(files):
            path, size, sha = files[self.fi]
            boot.remove(path + ".old")
            staged = self._staged(path, size)
            if staged == size and self.hasher is not None and sha_hex(self.hasher) == sha:
                self.fi += 1
                self.hasher = None
                continue
            if staged >= size:  # whole but wrong, or longer than it should be: again
                boot.remove(path + ".new")
                self.hasher = hashlib.sha256()
                staged = 0
            self.off = staged
            break
        for path, _, _ in files[self.fi + 1:]:
            boot.remove(path + ".new")
        self._set("downloading", "")
        self.asked_ms = None
        self.wait_ms = REQUEST_TIMEOUT_MS
        self._next(now)

    def _staged(self, path, size):
        """How many bytes of path.new are there, hashed into a new self.hasher."""
        self.hasher = hashlib.sha256()
        n = 0
        try:
            with open(path + ".new", "rb") as f:
                while n <= size:
                    block = f.read(1024)
                    if not block:
                        break
                    self.hasher.update(block)
                    n += len(block)
        except OSError:
            return 0
        return n

    def _next(self, now):
        """Ask for the next chunk, or switch when every file is in."""
        files = self.plan["files"]
        if self.fi >= len(files):
            self._switch(now)
            return
        path, size, _ = files[self.fi]
        if self.hasher is None:
            self.hasher = hashlib.sha256()
        if size == 0 and self.off == 0:  # an empty file: nothing to ask for
            _dirs(path)
            open(path + ".new", "wb").close()
            self._file_done(now)
            return
        self._ask(now)

    def _ask(self, now):
        path = self.plan["files"][self.fi][0]
        msg = '{"v":1,"kind":"ota_get","node_id":"%s","version":%s,"f":%d,"path":%s,"o":%d,"n":%d}' % (
            self.node_id, json.dumps(self.plan["version"]), self.fi, json.dumps(path), self.off,
            self.plan["chunk"])
        self.publish(self.up_topic, msg.encode())
        self.asked_ms = now

    def _chunk(self, payload):
        if self.state != "downloading":
            self.stats["stale"] += 1
            return
        nl = payload.find(b"\n")
        if nl < 0:
            raise ValueError("no header")
        head = json.loads(payload[1:nl])
        path, size, _ = self.plan["files"][self.fi]
        if head.get("version") != self.plan["version"] or head.get("f") != self.fi or head.get(
            "o") != self.off:
            self.stats["stale"] += 1  # an answer to an earlier request
            return
        data = memoryview(payload)[nl + 1:]
        want = min(self.plan["chunk"], size - self.off)
        if len(data) != want or sha_hex(hashlib.sha256(data)) != head.get("h"):
            self.stats["bad_chunks"] += 1  # refused: asked for again at once
            self.status_ms = None  # and said at the next pass, before a power cut loses it
            self._ask(self.now_ms())
            return
        if self.off == 0:
            _dirs(path)
        with open(path + ".new", "ab") as f:
            f.write(data)
        self.hasher.update(data)
        self.off += want
        self.stats["chunks"] += 1
        self.stats["bytes"] += want
        self.wait_ms = REQUEST_TIMEOUT_MS
        now = self.now_ms()
        if self.off >= size:
            self._file_done(now)
        else:
            self._ask(now)

    def _file_done(self, now):
        path, _, sha = self.plan["files"][self.fi]
        if sha_hex(self.hasher) != sha:
            self.stats["bad_files"] += 1  # every chunk matched, the whole did not: again
            boot.remove(path + ".new")
            self.off = 0
            self.hasher = None
        else:
            self.fi += 1
            self.off = 0
            self.hasher = None
        self._next(now)

    def _switch(self, now):
        paths = [f[0] for f in self.plan["files"]]
        marker = {"version": self.plan["version"], "from": self.fw, "files": paths,
                  "added": [p for p in paths if not boot.exists(p)]}
        boot.write_json(boot.PENDING, marker)
        boot.remove(boot.BOOTS)
        boot.remove(PLAN)
        boot.finish_switch(paths)
        self.plan = None
        self._set("switching", "")
        self.reset_at = now + SWITCH_RESET_MS

    def _discard(self):
        if self.plan is not None:
            for path, _, _ in self.plan["files"]:
                boot.remove(path + ".new")
        boot.remove(PLAN)
        self.plan = None
        self.hasher = None

    def reset(self):
        if self.before_reset is not None:
            try:
                self.before_reset()
            except Exception:  # the reset matters more than the goodbye
                pass
        self._reset()

    # --- each pass of the main loop -------------------------------------------------------

    def tick(self, now):
        if self.state == "downloading" and self.asked_ms is not None:
            if now - self.asked_ms >= self.wait_ms:  # lost, or nobody answering: again
                self.stats["retries"] += 1
                self.wait_ms = min(self.wait_ms * 2, REQUEST_TIMEOUT_MAX_MS)
                self._ask(now)
        elif self.state == "trial":
            self._probation(now)
        elif self.state == "switching" and now >= self.reset_at:
            self.reset()
        every = IDLE_STATUS_EVERY_MS if self.state in ("idle", "failed") else STATUS_EVERY_MS
        if self.status_ms is None or now - self.status_ms >= every:
            if self.publish(self.up_topic, self.status()):
                self.status_ms = now

    def _probation(self, now):
        ran = now - self.started_ms
        acked = self.acked() if self.acked is not None else 1
        if acked and ran >= self.probation_ms:
            self._confirm()
        elif not acked and ran >= self.probation_max_ms:
            boot.rollback(self.marker, "no hello acked within %d ms" % self.probation_max_ms)
            self.reset()

    def _confirm(self):
        marker = self.marker
        boot.remove(boot.PENDING)  # the commit: from here this version stays
        boot.remove(boot.BOOTS)
        for path in marker["files"]:
            boot.remove(path + ".old")
        boot.write_json(boot.RESULT, {"version": marker["version"], "from": marker.get("from"),
                                      "result": "confirmed", "detail": ""})
        self.marker = None
        self._set("idle", "confirmed")

    def on_connect(self):
        self.status_ms = None
        if self.state == "downloading":
            self.asked_ms = None  # ask again at once: what was in flight is gone
            self._ask(self.now_ms())

    def _set(self, state, detail):
        self.state = state
        self.detail = detail
        self.status_ms = None

    def status(self):
        total = done = 0
        version = None
        if self.plan is not None:
            version = self.plan["version"]
            for i, f in enumerate(self.plan["files"]):
                total += f[1]
                if i < self.fi:
                    done += f[1]
            done += self.off
        elif self.marker is not None:
            version = self.marker["version"]
        s = {"v": 1, "kind": "ota_status", "node_id": self.node_id, "fw": self.fw,
             "state": self.state, "version": version, "done": done, "total": total,
             "detail": self.detail, "bad_chunks": self.stats["bad_chunks"],
             "retries": self.stats["retries"], "result": boot.read_json(boot.RESULT)}
        return json.dumps(s).encode()
