"""Where the injector reaches the cluster's fleets and supervisors, and who makes link faults.

One machine (the own cluster, ``--attach``): one fleet, one supervisor, link faults in the
fleet's transport. A cluster of hosts (``shoal chaos run --hosts``, services/hosts): a fleet
and a supervisor per host, and link faults made by the kernel between the hosts
(services/hosts/linkfaults.py), for the link faults whose targets are whole fleet hosts
(the layout makes them so: ``link_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.services.runtime.config import ShoalConfig

from .plan import Plan
from .scenario import on_services

LINK_KINDS = ("drop", "delay", "duplicate", "reorder", "partition")


@dataclass
class Topology:
    # sim ctl endpoint -> the node ids that fleet runs ([]: every node)
    sims: dict[str, list[str]]
    # supervisor ctl endpoint -> the services it runs ([]: every one)
    supervisors: dict[str, list[str]]
    kernel: Any = None  # hosts.linkfaults.KernelLinks, for a cluster of hosts
    host_nodes: dict[str, list[str]] = field(default_factory=dict)  # fleet host -> nodes
    service_host: dict[str, str] = field(default_factory=dict)  # service -> its host
    description: str = ""  # for the report: the hosts and how faults are made

    @classmethod
    def single(cls, config: ShoalConfig) -> Topology:
        return cls(sims={config.sim.ctl: []}, supervisors={config.supervisor.ctl: []})

    @classmethod
    def of_hosts(cls, layout: Any, kernel: Any) -> Topology:
        """A cluster of hosts (a services.hosts.layout.Layout)."""
        sims: dict[str, list[str]] = {}
        supervisors: dict[str, list[str]] = {}
        service_host: dict[str, str] = {}
        for h in layout.hosts:
            if not h.runs:
                continue
            config = layout.config(h.name)
            supervisors[config.supervisor.ctl] = list(h.runs)
            if "sim" in h.runs:
                sims[config.sim.ctl] = list(h.nodes)
            for service in h.runs:
                service_host.setdefault(service, h.name)
        described = ", ".join(
            f"{h.name} ({', '.join(h.nodes) if h.nodes else ', '.join(h.runs) or 'the injector'})"
            for h in layout.hosts
        )
        return cls(
            sims=sims,
            supervisors=supervisors,
            kernel=kernel,
            host_nodes={h.name: list(h.nodes) for h in layout.fleets()},
            service_host=service_host,
            description=f"hosts {described}; link faults: {layout.way or 'none'}",
        )

    def sims_for(self, nodes: list[str]) -> dict[str, list[str]]:
        """Each fleet's share of ``nodes`` (nodes []: every fleet, all its nodes)."""
        if not nodes:
            return {ep: [] for ep in self.sims}
        out: dict[str, list[str]] = {}
        for ep, owned in self.sims.items():
            mine = [n for n in nodes if not owned or n in owned]
            if mine:
                out[ep] = mine
        return out

    def supervisor_of(self, service: str) -> str:
        for ep, services in self.supervisors.items():
            if not services or service in services:
                return ep
        return next(iter(self.supervisors))

    def hosts_of(self, nodes: list[str]) -> list[str] | None:
        """The fleet hosts ``nodes`` fill exactly, or None if they take part of one (or
        there are no hosts): a kernel fault between hosts would hit bystanders."""
        if self.kernel is None:
            return None
        wanted = set(nodes)
        hosts = [h for h, on in self.host_nodes.items() if wanted & set(on)]
        covered = {n for h in hosts for n in self.host_nodes[h]}
        return sorted(hosts) if covered == wanted else None


def link_groups(plan: Plan) -> list[list[str]]:
    """The node sets link faults target: each must be whole fleet hosts."""
    return [
        list(step.targets)
        for step in plan.faults
        if step.kind in LINK_KINDS and not on_services(step.kind, step.targets)
    ]
