"""A shoal cluster spread over several hosts, made of Linux network namespaces on one machine.

Each host is a network namespace with one interface (``eth0``, a veth) plugged into a
private bridge in a namespace of its own (the switch); addresses are link-local
(169.254.77.0/24), so nothing can leave the machine, and no interface of the machine's own
namespace is touched. Each host runs ``shoal up --only ...`` with the same kind of config
file a real deployment gives a host (docs/deploy.md): every endpoint names the host that
binds it. Link faults between hosts are made by the kernel, on the hosts' interfaces
(``tc``: netem where the kernel has it, else a classifier that drops).

- ``netns.py``: the namespaces, the switch and the veths; build, teardown, leftovers.
- ``layout.py``: which host runs what (a fleet split so that each link fault cuts whole
  hosts), and each host's config file.
- ``cluster.py``: the processes: one ``shoal up`` per host, started and stopped.
- ``linkfaults.py``: the kernel's link faults between two hosts.

It binds nothing itself: each host's services bind on that host's address. It trusts that it
runs as root (``ip netns``, ``tc``), and it creates and removes only namespaces named with
its own prefix (``shoalnet-PID-...``), whose processes are its own.
"""
