"""The board's half of over-the-air updates (firmware/esp32/ota.py, boot.py): under CPython
against the OTA service's own payloads (services/ota/wire.py, bundles.py), and under the
real MicroPython unix port with the ESP32's 110 KB heap, the whole firmware imported.

The board's filesystem is a temporary directory (the test's working directory)."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from shoal.services.firmware.bundle import ESP32_DIR, copy_standins, tool
from shoal.services.ota import wire
from shoal.services.ota.bundles import Bundle

OLD, NEW = "shoal-esp32/0.2", "shoal-esp32/0.3"


class Reset(Exception):
    """machine.reset() on a board: the test's stand-in ends the 'boot' with this."""


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boot and ota imported fresh, the working directory as the board's flash."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ESP32_DIR))
    monkeypatch.syspath_prepend(str(tmp_path))  # the board's own files first
    machine = types.ModuleType("machine")

    def reset() -> None:
        raise Reset

    machine.reset = reset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "machine", machine)
    for name in ("otaboot", "ota", "main"):
        sys.modules.pop(name, None)
    boot = importlib.import_module("otaboot")
    ota = importlib.import_module("ota")
    (tmp_path / "main.py").write_text(f'FIRMWARE_VERSION = "{OLD}"\n')
    (tmp_path / "hal.mpy").write_bytes(b"old hal")
    return types.SimpleNamespace(boot=boot, ota=ota, dir=tmp_path)


def new_bundle(size: int = 5000) -> Bundle:
    files = {
        "main.py": f'FIRMWARE_VERSION = "{NEW}"\n'.encode(),
        "hal.mpy": bytes(range(256)) * (size // 256),
        "lib/nodecore/extra.mpy": b"x" * 1500,
    }
    return Bundle(
        NEW,
        [(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in files.items()],
        list(files.values()),
    )


class Service:
    """The OTA service's answers (wire.chunk from the bundle), driven by the test."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.gets: list[wire.Get] = []
        self.statuses: list[wire.Status] = []
        self.corrupt: set[tuple[int, int]] = set()  # (file, offset) to corrupt once

    def publish(self, topic: str, payload: bytes) -> bool:
        msg = wire.decode(payload)
        (self.gets if isinstance(msg, wire.Get) else self.statuses).append(msg)
        return True

    def answer(self, client: Any, limit: int = 10_000) -> int:
        """Answer requests until none is left (or ``limit`` chunks); how many answered."""
        n = 0
        while self.gets and n < limit:
            get = self.gets.pop(0)
            data = self.bundle.read(get.f, get.path, get.o, get.n)
            assert data is not None
            if (get.f, get.o) in self.corrupt:
                self.corrupt.discard((get.f, get.o))
                data = b"\xff" + data[1:]
                payload = wire.chunk(get.version, get.f, get.o, data)
                head, _, body = payload.partition(b"\n")
                good = hashlib.sha256(self.bundle.data[get.f][get.o : get.o + get.n]).hexdigest()
                payload = head.replace(hashlib.sha256(data).hexdigest().encode(), good.encode())
                payload += b"\n" + body  # the header of the real bytes, one byte changed
            else:
                payload = wire.chunk(get.version, get.f, get.o, data)
            client.on_message(payload)
            n += 1
        return n


def client_for(board: Any, service: Service, **kw: Any) -> Any:
    clock = {"now": 0}
    c = board.ota.OtaClient("esp32-01", OLD, service.publish, lambda: clock["now"], **kw)
    c.clock = clock
    return c


def offer(client: Any, bundle: Bundle, chunk: int = 1024) -> None:
    client.on_message(wire.offer(bundle.version, chunk, bundle.files))


def test_a_transfer_stages_every_file_verifies_it_and_switches(board: Any) -> None:
    bundle = new_bundle()
    service = Service(bundle)
    client = client_for(board, service)
    offer(client, bundle)
    assert client.state == "downloading"
    service.answer(client)
    assert client.state == "switching"
    for (path, _, _), data in zip(bundle.files, bundle.data, strict=True):
        assert (board.dir / path).read_bytes() == data
    assert (board.dir / "hal.mpy.old").read_bytes() == b"old hal"
    marker = json.loads((board.dir / "ota_pending.json").read_text())
    assert marker["version"] == NEW and marker["from"] == OLD
    assert marker["added"] == ["lib/nodecore/extra.mpy"]
    client.tick(100)
    assert service.statuses[-1].state == "switching"
    with pytest.raises(Reset):
        client.tick(400)  # the reset, once the status had its moment to leave
    assert client.stats["bytes"] == bundle.size


def test_a_corrupted_chunk_is_refused_and_fetched_again(board: Any) -> None:
    bundle = new_bundle()
    service = Service(bundle)
    service.corrupt = {(1, 1024)}
    client = client_for(board, service)
    offer(client, bundle)
    service.answer(client)
    assert client.stats["bad_chunks"] == 1
    assert client.state == "switching"
    assert (board.dir / "hal.mpy").read_bytes() == bundle.data[1]


def test_a_lost_answer_is_asked_for_again_after_its_timeout(board: Any) -> None:
    bundle = new_bundle()
    service = Service(bundle)
    client = client_for(board, service)
    offer(client, bundle)
    service.gets.clear()  # the request (or its answer) is lost
    client.tick(1000)
    assert not service.gets
    client.tick(1600)
    assert len(service.gets) == 1 and client.stats["retries"] == 1
    service.answer(client)
    assert client.state == "switching"


def test_a_power_cut_mid_transfer_resumes_from_what_is_on_flash(board: Any) -> None:
    bundle = new_bundle()
    service = Service(bundle)
    client = client_for(board, service)
    offer(client, bundle)
    service.answer(client, limit=3)  # main.py and two chunks of hal.mpy, then the power goes
    staged = (board.dir / "hal.mpy.new").stat().st_size
    assert 0 < staged < bundle.files[1][1]
    service.gets.clear()
    again = client_for(board, service)  # a new boot: the plan is on flash, no offer needed
    assert again.state == "downloading"
    assert (service.gets[0].f, service.gets[0].o) == (1, staged)
    service.answer(again)
    assert again.state == "switching"
    assert again.stats["bytes"] == bundle.size - bundle.files[0][1] - staged
    assert (board.dir / "hal.mpy").read_bytes() == bundle.data[1]


def test_an_update_that_does_not_fit_the_flash_is_refused_before_any_write(board: Any) -> None:
    bundle = new_bundle()
    service = Service(bundle)
    tiny = (4096, 4096, 100, 2, 2, 0, 0, 0, 0, 255)  # 8 KB free
    client = client_for(board, service, statvfs=lambda _path: tiny)
    offer(client, bundle)
    assert client.state == "failed" and "no space" in client.detail
    assert not service.gets and not (board.dir / "ota_plan.json").exists()


def switched(board: Any) -> Any:
    """A board whose update to NEW is staged and switched (the marker written)."""
    bundle = new_bundle()
    service = Service(bundle)
    client = client_for(board, service)
    offer(client, bundle)
    service.answer(client)
    return bundle


def test_a_new_version_confirms_itself_once_acked_and_past_its_probation(board: Any) -> None:
    switched(board)
    assert board.boot.count_boot(board.boot.pending()) is not None
    service = Service(new_bundle())
    acked = {"n": 0}
    c = board.ota.OtaClient(
        "esp32-01", NEW, service.publish, lambda: 0, acked=lambda: acked["n"], probation_ms=5000
    )
    assert c.state == "trial"
    c.tick(6000)
    assert c.state == "trial"  # no ack of its hello yet
    acked["n"] = 1
    c.tick(6100)
    assert c.state == "idle" and c.detail == "confirmed"
    assert not (board.dir / "ota_pending.json").exists()
    assert not (board.dir / "hal.mpy.old").exists()
    assert json.loads((board.dir / "ota_result.json").read_text())["result"] == "confirmed"


def test_a_version_never_acked_rolls_back_after_its_longest_probation(board: Any) -> None:
    switched(board)
    board.boot.count_boot(board.boot.pending())
    service = Service(new_bundle())
    c = board.ota.OtaClient(
        "esp32-01", NEW, service.publish, lambda: 0, acked=lambda: 0, probation_max_ms=10_000
    )
    with pytest.raises(Reset):
        c.tick(10_001)
    assert (board.dir / "hal.mpy").read_bytes() == b"old hal"
    assert OLD in (board.dir / "main.py").read_text()


def test_the_boot_guard_rolls_back_after_too_many_unconfirmed_boots(board: Any) -> None:
    switched(board)
    for _ in range(board.boot.MAX_TRIAL_BOOTS):
        assert board.boot.count_boot(board.boot.pending()) is not None
    assert board.boot.count_boot(board.boot.pending()) is None  # one boot too many
    assert (board.dir / "hal.mpy").read_bytes() == b"old hal"
    assert not (board.dir / "lib/nodecore/extra.mpy").exists()  # new in the update: gone
    result = json.loads((board.dir / "ota_result.json").read_text())
    assert result["result"] == "rolled_back" and "3 boots" in result["detail"]
    assert board.boot.pending() is None


def test_a_version_that_raises_at_import_is_rolled_back_at_once(board: Any) -> None:
    switched(board)
    (board.dir / "main.py").write_text(f'FIRMWARE_VERSION = "{NEW}"\nraise ImportError("bad")\n')
    sys.modules.pop("main", None)
    with pytest.raises(Reset):
        board.boot.run()
    assert OLD in (board.dir / "main.py").read_text()
    result = json.loads((board.dir / "ota_result.json").read_text())
    assert result["result"] == "rolled_back" and "import failed" in result["detail"]


def test_a_switch_cut_halfway_by_a_power_cut_is_finished_at_boot(board: Any) -> None:
    bundle = new_bundle()
    service = Service(bundle)
    client = client_for(board, service)
    client._switch_before = client._switch
    client._switch = lambda now: None  # staged and verified, then the power goes ...
    offer(client, bundle)
    service.answer(client)
    paths = [f[0] for f in bundle.files]
    board.boot.write_json(board.boot.PENDING, {"version": NEW, "from": OLD, "files": paths})
    (board.dir / "hal.mpy").rename(board.dir / "hal.mpy.old")  # ... after one rename of two
    board.boot.count_boot(board.boot.pending())
    assert (board.dir / "hal.mpy").read_bytes() == bundle.data[1]
    assert (board.dir / "hal.mpy.old").read_bytes() == b"old hal"
    assert NEW in (board.dir / "main.py").read_text()


# --- the real MicroPython, 110 KB heap -----------------------------------------------------

MP_SCRIPT = """
import gc, sys, json, hashlib
sys.path.insert(0, "lib")
import config, clock, hal, mqtt, transport, ota
import nodecore.node, nodecore.engine, nodecore.delegation, nodecore.handlers
from binascii import hexlify
gc.collect()
gc.threshold(max(4096, gc.mem_free() - 24576))  # as main.py sets it
low = [gc.mem_free()]
files = json.load(open("srv/files.json"))
gets = []
def publish(topic, payload):
    if b'"ota_get"' in payload:
        gets.append(json.loads(payload))
    return True
c = ota.OtaClient("board-01", "shoal-esp32/0.2", publish, lambda: 0)
c.on_message(json.dumps({"kind": "ota_offer", "version": "v9", "chunk": 1024,
                         "files": files}).encode())
corrupted = False
while gets:
    g = gets.pop(0)
    with open("srv/" + g["path"], "rb") as f:
        f.seek(g["o"])
        data = f.read(g["n"])
    h = hexlify(hashlib.sha256(data).digest()).decode()
    if g["f"] == 1 and g["o"] == 1024 and not corrupted:
        corrupted = True
        data = b"!" + data[1:]
    payload = b"K" + json.dumps({"version": g["version"], "f": g["f"], "o": g["o"],
                                 "h": h}).encode() + b"\\n" + data
    c.on_message(payload)
    del payload, data
    gc.collect()  # what the transfer holds, garbage aside
    low[0] = min(low[0], gc.mem_free())
print("shoal-ota", c.state, c.stats["bytes"], c.stats["bad_chunks"], low[0])
"""


@pytest.mark.skipif(tool("micropython") is None, reason="no MicroPython unix port")
def test_a_transfer_under_micropython_within_the_esp32_heap(tmp_path: Path) -> None:
    """The whole firmware imported, then a ~37 KB bundle fetched chunk by chunk (one of them
    corrupted, refused, fetched again) under a 110 KB heap."""
    from shoal.services.boards.layout import compiled_bundle

    board = tmp_path / "board"
    import shutil

    shutil.copytree(compiled_bundle(tmp_path / "emu"), board)
    (board / "config.py").write_text((ESP32_DIR / "config.py").read_text())
    copy_standins(board)
    srv = board / "srv"
    files = []
    for src in sorted(p for p in board.rglob("*.mpy") if "srv" not in p.parts):
        rel = src.relative_to(board).as_posix()
        (srv / rel).parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        (srv / rel).write_bytes(data)
        files.append([rel, len(data), hashlib.sha256(data).hexdigest()])
    (srv / "files.json").write_text(json.dumps(files))
    (board / "probe.py").write_text(MP_SCRIPT)
    done = subprocess.run(
        [str(tool("micropython")), "-X", "heapsize=110K", "probe.py"],
        cwd=board,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = [x for x in done.stdout.splitlines() if x.startswith("shoal-ota ")]
    assert line, done.stdout + done.stderr
    _, state, nbytes, bad, low = line[0].split()
    assert state == "switching"
    assert int(nbytes) == sum(f[1] for f in files) and int(bad) == 1
    for rel, _, sha in files:
        assert hashlib.sha256((board / rel).read_bytes()).hexdigest() == sha
    print(f"ota under MicroPython: {nbytes} B in, least free heap (live) {int(low):,} B of 110 KB")
    assert int(low) > 20_000
