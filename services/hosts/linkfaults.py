"""Link faults between two hosts, made by the kernel on the hosts' own interfaces.

A fault on the link between hosts A and B is a rule on A's ``eth0`` for packets to B's
address and one on B's for packets to A's: the kernel drops or holds them, TCP sees a
lossy or dead path, and the services see what TCP makes of it (retransmissions, stalls,
late bursts), as on a real network. Each (host, peer) has at most one rule: the merge of
the faults on that link, replaced as they come and go.

Two ways, chosen by what the kernel has (``probe``):

- **netem** (``sch_netem``): under an HTB root, a class per faulty peer with a netem qdisc
  and a u32 filter on the peer's address. ``drop`` p with correlation c is netem's
  Gilbert-Elliott model ``loss gemodel`` with P(good->bad) = (1-c)p, P(bad->good) =
  (1-c)(1-p), loss 100% in bad and 0% in good: exactly the simulator's chain (a decision
  repeated with probability c, else a fresh draw), so the loss rate stays p; a partition
  is ``loss 100%``; ``delay`` d with jitter j is ``delay (d+j/2) (j/2)`` (uniform in
  [d, d+j], the simulator's); ``duplicate`` and ``reorder`` are netem's own (netem sends
  ``reorder`` R% at once and delays the rest, so a hold probability r is R = 100(1-r)).
  Delay, duplication and reordering are put on the node's side only (node -> service),
  as the simulator puts them; loss on both sides.
- **drop** (no ``sch_netem``, as on some CI and VM kernels): on a clsact egress hook, a
  classic-BPF classifier (IPv4, to the peer, and for p < 1 the kernel's own random number
  below p x 2^32) whose action redirects the packet into a veth whose peer is down, where
  the kernel drops it. Loss and partitions are the kernel's; a loss correlation cannot be
  (a classic BPF program keeps no state between packets: the loss is uniform at rate p),
  and delay, duplication and reordering cannot at all: ``split`` hands those back, and the
  fault injector leaves them to the simulated fleet's transport and says so in the run's
  history.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .netns import NetnsError, run

DEV = "eth0"
SINK = "sk0"  # its peer sk1 stays down: what is sent into sk0 is dropped by the kernel
FIRST_PREF = 16  # filter pref (and netem class minor) of peer k: FIRST_PREF + k
SKF_AD_RANDOM = (1 << 32) - 0x1000 + 56  # classic BPF: load a random u32 (SKF_AD_OFF + 56)


def probe(netns: str) -> str | None:
    """Which way this kernel makes link faults: "netem", "drop", or None (neither works).
    Tried on a throwaway veth in ``netns``."""
    base = ["ip", "-n", netns, "link"]
    run([*base, "add", "name", "pr0", "type", "veth", "peer", "name", "pr1"])
    try:
        tc = ["tc", "-n", netns]
        try:
            run([*tc, "qdisc", "add", "dev", "pr0", "root", "netem", "delay", "1ms"])
            return "netem"
        except NetnsError:
            pass
        try:
            run([*tc, "qdisc", "add", "dev", "pr0", "clsact"])
            run(
                [
                    *tc,
                    "filter",
                    "add",
                    "dev",
                    "pr0",
                    "egress",
                    "pref",
                    "1",
                    "bpf",
                    "bytecode",
                    cbpf("169.254.0.1", 0.5),
                    "action",
                    "mirred",
                    "egress",
                    "redirect",
                    "dev",
                    "pr1",
                ]
            )
            return "drop"
        except NetnsError:
            return None
    finally:
        run([*base, "del", "dev", "pr0"], check=False)


def cbpf(peer: str, drop: float) -> str:
    """A classic BPF program in tc's ``bytecode`` form: it matches (non-zero) an IPv4
    packet to ``peer``, and when drop < 1 only with probability ``drop``."""
    dst = int(ipaddress.IPv4Address(peer))
    rand = drop < 1.0
    prog = [
        (0x28, 0, 0, 12),  # ldh [12]: the EtherType (tc sees the frame from its L2 header)
        (0x15, 0, 5 if rand else 3, 0x0800),  # jeq IPv4, else no match (offsets: from the next)
        (0x20, 0, 0, 30),  # ld [30]: the destination address
        (0x15, 0, 3 if rand else 1, dst),  # jeq peer, else no match
    ]
    if rand:
        threshold = min(int(drop * (1 << 32)), (1 << 32) - 1)
        prog += [
            (0x20, 0, 0, SKF_AD_RANDOM),  # ld rand
            (0x35, 1, 0, threshold),  # jge threshold: no match
        ]
    prog += [(0x06, 0, 0, 0xFFFFFFFF), (0x06, 0, 0, 0)]  # ret match, ret no match
    return f"{len(prog)}," + ",".join(f"{op} {jt} {jf} {k}" for op, jt, jf, k in prog)


def netem_args(params: dict[str, Any], node_side: bool) -> list[str]:
    """netem's arguments for the simulator's link params (``link_params`` in the fault
    injector's actuators): loss always; delay, duplicate, reorder on the node's side."""
    args: list[str] = []
    delay, jitter = params.get("delay_ms", 0), params.get("jitter_ms", 0)
    reorder = params.get("reorder", 0.0)
    if node_side and (delay or jitter or reorder):
        held = delay or (50 if reorder else 0)
        args += ["delay", f"{held + jitter / 2:g}ms"]
        if jitter:
            args.append(f"{jitter / 2:g}ms")
        if reorder:
            args += ["reorder", f"{100 * (1 - reorder):g}%"]
    drop, corr = params.get("drop", 0.0), params.get("correlation", 0.0)
    if drop >= 1.0:
        args += ["loss", "100%"]
    elif drop and corr:
        p, r = (1 - corr) * drop, (1 - corr) * (1 - drop)
        args += ["loss", "gemodel", f"{100 * p:g}%", f"{100 * r:g}%", "100%", "0%"]
    elif drop:
        args += ["loss", "random", f"{100 * drop:g}%"]
    if node_side and params.get("duplicate"):
        args += ["duplicate", f"{100 * params['duplicate']:g}%"]
    return args


def _htb_class(netns: str, classid: str) -> list[str]:
    """The argv adding an HTB class under the root, fast enough never to shape."""
    return [
        "tc",
        "-n",
        netns,
        "class",
        "add",
        "dev",
        DEV,
        "parent",
        "1:",
        "classid",
        classid,
        "htb",
        "rate",
        "10gbit",
    ]


@dataclass
class KernelLinks:
    """The link faults of one set of hosts: ``hosts`` maps each host to (netns, address).
    ``prepare`` each host once, then ``set(a, b, params)`` / ``set(a, b, None)``."""

    hosts: dict[str, tuple[str, str]]
    way: str  # "netem" or "drop" (``probe``)
    installed: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    dropped_total: int = 0  # packets the rules dropped, counted as each rule went away

    def prepare(self, host: str) -> None:
        netns = self.hosts[host][0]
        tc = ["tc", "-n", netns]
        if self.way == "netem":
            run([*tc, "qdisc", "add", "dev", DEV, "root", "handle", "1:", "htb", "default", "1"])
            run(_htb_class(netns, "1:1"))
        else:
            run(
                [
                    "ip",
                    "-n",
                    netns,
                    "link",
                    "add",
                    "name",
                    SINK,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "sk1",
                ]
            )
            run(["ip", "-n", netns, "link", "set", "dev", SINK, "up"])
            run([*tc, "qdisc", "add", "dev", DEV, "clsact"])

    def split(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """(what the kernel does, what is left to the simulator, notes) of link params."""
        if self.way == "netem":
            return dict(params), {}, []
        kernel = {k: v for k, v in params.items() if k in ("drop", "services")}
        left = {
            k: v
            for k, v in params.items()
            if k in ("delay_ms", "jitter_ms", "duplicate", "reorder") and v
        }
        notes = []
        if params.get("correlation") and 0 < params.get("drop", 0) < 1:
            notes.append("loss uncorrelated (no sch_netem: classic BPF keeps no state)")
        if left:
            notes.append(f"{', '.join(sorted(left))} by the simulator (no sch_netem)")
        return kernel, left, notes

    def set(self, node_host: str, service_host: str, params: dict[str, Any] | None) -> None:
        """Put the link between two hosts under ``params`` (the simulator's link params;
        None or all zero: healed). ``node_host`` is the side the nodes are on."""
        for host, peer, node_side in (
            (node_host, service_host, True),
            (service_host, node_host, False),
        ):
            self._clear(host, peer)
            if not params:
                continue
            if self.way == "netem":
                args = netem_args(params, node_side)
                if args:
                    self._netem(host, peer, args)
            elif params.get("drop"):
                self._drop(host, peer, float(params["drop"]))

    def clear_all(self) -> list[str]:
        """Every rule removed (the rollback); returns the errors."""
        errors = []
        for host, peer in list(self.installed):
            try:
                self._clear(host, peer)
            except NetnsError as err:
                errors.append(str(err))
        return errors

    # --- one side ---------------------------------------------------------------------------

    def _pref(self, peer: str) -> int:
        return FIRST_PREF + sorted(self.hosts).index(peer)

    def _drop(self, host: str, peer: str, drop: float) -> None:
        netns, pref = self.hosts[host][0], str(self._pref(peer))
        run(
            [
                "tc",
                "-n",
                netns,
                "filter",
                "add",
                "dev",
                DEV,
                "egress",
                "pref",
                pref,
                "bpf",
                "bytecode",
                cbpf(self.hosts[peer][1], drop),
                "action",
                "mirred",
                "egress",
                "redirect",
                "dev",
                SINK,
            ]
        )
        self.installed[(host, peer)] = [f"filter del dev {DEV} egress pref {pref}"]

    def _netem(self, host: str, peer: str, args: list[str]) -> None:
        netns, pref = self.hosts[host][0], self._pref(peer)
        classid = f"1:{pref:x}"
        tc = ["tc", "-n", netns]
        run(_htb_class(netns, classid))
        self.installed[(host, peer)] = [f"class del dev {DEV} classid {classid}"]
        run(
            [
                *tc,
                "qdisc",
                "add",
                "dev",
                DEV,
                "parent",
                classid,
                "handle",
                f"{pref:x}:",
                "netem",
                *args,
            ]
        )
        self.installed[(host, peer)].insert(0, f"qdisc del dev {DEV} parent {classid}")
        run(
            [
                *tc,
                "filter",
                "add",
                "dev",
                DEV,
                "parent",
                "1:",
                "protocol",
                "ip",
                "pref",
                str(pref),
                "u32",
                "match",
                "ip",
                "dst",
                f"{self.hosts[peer][1]}/32",
                "flowid",
                classid,
            ]
        )
        self.installed[(host, peer)].insert(0, f"filter del dev {DEV} parent 1: pref {pref}")

    def dropped(self, host: str, peer: str) -> int:
        """Packets the kernel dropped under the rule on (host, peer) so far (0: none)."""
        if (host, peer) not in self.installed:
            return 0
        netns, pref = self.hosts[host][0], self._pref(peer)
        try:
            if self.way == "netem":
                out = run(
                    ["tc", "-n", netns, "-s", "qdisc", "show", "dev", DEV, "parent", f"1:{pref:x}"]
                )
                return sum(int(n) for n in re.findall(r"dropped (\d+)", out))
            out = run(
                ["tc", "-n", netns, "-s", "filter", "show", "dev", DEV, "egress", "pref", str(pref)]
            )
        except NetnsError:
            return 0
        # what the filter's mirred action sent into the sink, where the kernel dropped it
        return sum(int(n) for n in re.findall(r"Sent \d+ bytes (\d+) pkt", out))

    def _clear(self, host: str, peer: str) -> None:
        if (host, peer) in self.installed:
            self.dropped_total += self.dropped(host, peer)
        undo = self.installed.pop((host, peer), None)
        if not undo:
            return
        netns = self.hosts[host][0]
        for line in undo:
            with contextlib.suppress(NetnsError):  # gone with its parent already
                run(["tc", "-n", netns, *line.split()])
