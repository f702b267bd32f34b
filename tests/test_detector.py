"""The accrual detector, driven by a fake clock: steady, jittery, lossy, bursty and paused
observer histories. Each history asks: would a live node ever have been declared dead
(silence at some moment >= the dead threshold in force then)?"""

from __future__ import annotations

import random

import pytest

from shoal.services.liveness.detector import Detector, Thresholds, z_for_phi
from shoal.services.runtime.config import LivenessConfig

HB_S = 0.25


def settings(**overrides: object) -> Thresholds:
    return Thresholds(LivenessConfig(**overrides))  # type: ignore[arg-type]


def run_history(det: Detector, arrivals: list[float]) -> tuple[int, int]:
    """Feed arrivals; count the gaps that would have been a suspect / a dead verdict."""
    suspects = deaths = 0
    for t in arrivals:
        silence = det.silence(t)
        suspects += silence >= det.suspect_after_s
        deaths += silence >= det.dead_after_s
        det.heard(t)
    return suspects, deaths


def periodic(n: int, loss: float = 0.0, jitter_s: float = 0.0, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        if rng.random() < loss:
            continue
        out.append(i * HB_S + rng.uniform(0, jitter_s))
    return sorted(out)


def test_z_for_phi_is_the_normal_tail_quantile() -> None:
    assert z_for_phi(1.0) == pytest.approx(1.2816, abs=1e-3)
    assert z_for_phi(8.0) == pytest.approx(5.612, abs=1e-2)


def test_steady_250ms_heartbeats_give_suspect_near_0_85s_and_dead_near_1_4s() -> None:
    det = Detector(settings(), now=0.0, announced_ms=250)
    run_history(det, periodic(400))
    assert det.mean_s() == pytest.approx(0.25, abs=1e-6)
    assert 0.80 <= det.suspect_after_s <= 0.90
    assert 1.30 <= det.dead_after_s <= 1.45
    last = det.last
    assert det.phi(last + 0.3) < 1.0
    assert det.phi(last + det.suspect_after_s) == pytest.approx(1.0, abs=0.01)
    assert det.phi(last + det.dead_after_s) == pytest.approx(8.0, abs=0.01)
    assert det.phi(last + 100.0) == 99.0  # capped, never inf


def test_jittery_link_never_reaches_dead_and_keeps_dead_under_1_5s() -> None:
    det = Detector(settings(), now=0.0, announced_ms=250)
    _, deaths = run_history(det, periodic(4000, jitter_s=0.05, seed=2))
    assert deaths == 0
    assert det.dead_after_s < 1.5


def test_five_percent_loss_makes_no_false_dead_in_ten_thousand_heartbeats() -> None:
    det = Detector(settings(), now=0.0, announced_ms=250)
    suspects, deaths = run_history(det, periodic(10_000, loss=0.05, jitter_s=0.05, seed=3))
    assert deaths == 0
    assert suspects < 10  # three losses in a row: rare, and only suspect


def test_a_lossier_link_gets_wider_thresholds_from_its_own_intervals() -> None:
    clean = Detector(settings(), now=0.0, announced_ms=250)
    lossy = Detector(settings(), now=0.0, announced_ms=250)
    run_history(clean, periodic(2000, seed=4))
    run_history(lossy, periodic(2000, loss=0.3, seed=4))
    assert lossy.std_s() > clean.std_s()
    assert lossy.dead_after_s > clean.dead_after_s + 0.2


def test_bursts_widen_the_thresholds_and_the_window_forgets_them() -> None:
    det = Detector(settings(window=50), now=0.0, announced_ms=250)
    history = periodic(400)
    # One 1 s hole (four heartbeats lost) every 25 heartbeats.
    bursty = [t for i, t in enumerate(history) if i % 25 not in (10, 11, 12)]
    run_history(det, bursty)
    widened = det.dead_after_s
    assert widened > 1.45
    run_history(det, [det.last + HB_S * i for i in range(1, 60)])
    assert det.dead_after_s < widened  # 50 clean intervals later the burst is out of the window


def test_a_paused_observer_restarts_the_clock_and_the_gap_is_not_a_sample() -> None:
    det = Detector(settings(), now=0.0, announced_ms=250)
    run_history(det, periodic(50))  # half a window: the sample count shows what was added
    samples = det.samples()
    mean = det.mean_s()
    # The observer was blind for 5 s; it recovers at t=30.
    det.restart_clock(30.0)
    assert det.silence(30.5) == pytest.approx(0.5)
    det.heard(30.6)  # spans the outage: not a sample
    det.heard(30.85)
    assert det.samples() == samples + 1
    assert det.mean_s() == pytest.approx(mean, rel=0.01)


def test_an_outage_interval_is_not_learned() -> None:
    det = Detector(settings(), now=0.0, announced_ms=250)
    run_history(det, periodic(100))
    before = (det.samples(), det.dead_after_s)
    det.heard(det.last + 10.0)  # came back after being dead
    assert (det.samples(), det.dead_after_s) == before


def test_without_a_hello_the_prior_rules_until_min_samples_then_the_node_is_learned() -> None:
    det = Detector(settings(default_interval_ms=1000, min_samples=5), now=0.0)
    assert det.expected_s() == 1.0
    assert det.dead_after_s > 3.0  # conservative until it knows the node
    run_history(det, periodic(5))
    assert det.expected_s() == pytest.approx(0.25)
    assert det.dead_after_s < 1.5


def test_arrivals_much_closer_than_the_interval_are_one_arrival() -> None:
    det = Detector(settings(), now=0.0, announced_ms=250)
    run_history(det, periodic(40))
    samples = det.samples()
    t = det.last
    det.heard(t + 0.01)  # a resend burst, or telemetry right after a heartbeat
    det.heard(t + 0.02)
    assert det.samples() == samples
    assert det.last == pytest.approx(t + 0.02)


def test_a_long_run_keeps_exact_statistics() -> None:
    det = Detector(settings(window=100), now=0.0, announced_ms=250)
    run_history(det, periodic(100_000, jitter_s=0.05, seed=5))
    window = det.intervals
    mean = sum(window) / len(window)
    assert det.mean_s() == pytest.approx(mean, rel=1e-9)
