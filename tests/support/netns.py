"""Hosts for tests: network namespaces joined by veth pairs on a bridge, and a cluster on them.

Each host is a network namespace with one interface (h0) and an address on
10.77.0.0/24; its veth peer sits in a "switch" namespace of the test's own,
on a bridge there, so nothing is added to the machine's own network. The
machine's filesystem stands in for NFS: every host sees the same paths.
A fault is made where it would happen: a cut link is the switch's port set
down; packet loss is an nftables rule in the host (this kernel has no netem).

Everything is removed at close(), even when a test fails: the processes
started in the hosts (each in a session of its own, so programs go too), then
the namespaces. Names carry this process's pid, so two test runs never meet.
"""
import itertools
import json
import os
import shutil
import subprocess

from support.localcluster import PYTHON, REPO, kill_session, sessions_members, wait_until

SUBNET = "10.77.0"
MASTER_PORT = 6000
WORKER_PORT = 6001
COMMAND_TIMEOUT = 30.0
ASK = REPO / "tests" / "support" / "ask.py"
_networks = itertools.count()


def unavailable():
    """Why hosts cannot be made here (one line), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"mrprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def pid_namespaces():
    """True if a worker can run as pid 1 of a pid namespace of its own (unshare)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                          capture_output=True).returncode == 0


def nft_unavailable():
    if shutil.which("nft") is None:
        return "nftables' `nft` is not installed (.ci/run installs it)"
    return None


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=COMMAND_TIMEOUT)


class Host:
    """One machine: a namespace, an address, a link to the switch."""

    def __init__(self, network, label, number):
        self.network = network
        self.label = label
        self.namespace = f"{network.name}-{label}"
        self.address = f"{SUBNET}.{number}"
        self.port = f"p{number}"  # its link's end on the switch

    def create(self):
        ip("netns", "add", self.namespace)
        ip("link", "add", "h0", "netns", self.namespace, "type", "veth",
           "peer", "name", self.port, "netns", self.network.switch)
        ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", "h0")
        ip("-n", self.namespace, "link", "set", "lo", "up")
        ip("-n", self.namespace, "link", "set", "h0", "up")
        ip("-n", self.network.switch, "link", "set", self.port, "master", "br0")
        ip("-n", self.network.switch, "link", "set", self.port, "up")

    def command(self, argv):
        return ["ip", "netns", "exec", self.namespace, *[str(a) for a in argv]]

    def cut(self):
        """Unplug its cable: nothing goes in or out until heal()."""
        ip("-n", self.network.switch, "link", "set", self.port, "down")

    def heal(self):
        ip("-n", self.network.switch, "link", "set", self.port, "up")

    def lose(self, percent):
        """Drop `percent` % of the packets it sends (each packet is lost at most once)."""
        rules = (f"table inet loss {{\n"
                 f"  chain output {{\n"
                 f"    type filter hook output priority 0; policy accept;\n"
                 f"    oifname \"h0\" numgen random mod 100 < {percent} drop\n"
                 f"  }}\n"
                 f"}}\n")
        subprocess.run(self.command(["nft", "-f", "-"]), input=rules.encode(), check=True,
                       capture_output=True, timeout=COMMAND_TIMEOUT)

    def pids(self):
        found = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True,
                               timeout=COMMAND_TIMEOUT)
        return [int(p) for p in found.stdout.split()]


class Network:
    """A switch and the hosts plugged into it."""

    def __init__(self):
        self.name = f"mrt{os.getpid()}n{next(_networks)}"
        self.switch = f"{self.name}-sw"
        self.hosts = []
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, label):
        host = Host(self, label, len(self.hosts) + 1)
        self.hosts.append(host)
        host.create()
        return host

    def close(self):
        """Kill what runs in its hosts (all ours: the namespaces are), remove them."""
        for host in self.hosts:
            for pid in host.pids():
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
        for namespace in [h.namespace for h in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class NetCluster:
    """A master on one host, workers on others, and a client host to submit from."""

    def __init__(self, network, workdir, secret_file):
        self.network = network
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, MAPREDUCE_SECRET_FILE=str(secret_file))
        self.env.pop("PYTHONUNBUFFERED", None)
        self.master_host = network.add_host("master")
        self.client = network.add_host("client")
        self.master = None
        self.workers = {}  # host -> Popen
        self.sessions = []
        self.starts = itertools.count()
        # Each worker as pid 1 of its own pid namespace where possible: every
        # worker then has the same pid, as in containers, and a rebooted one
        # comes back with the pid it had.
        self.worker_prefix = (["unshare", "--pid", "--fork", "--mount-proc"]
                              if pid_namespaces() else [])

    @property
    def address(self):
        return f"{self.master_host.address}:{MASTER_PORT}"

    def spawn(self, host, argv, log_name, env=None, prefix=()):
        with open(self.logs / log_name, "ab") as log:
            process = subprocess.Popen(host.command([*prefix, PYTHON, *argv]), cwd=self.workdir,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       env=env or self.env, start_new_session=True)
        self.sessions.append(process.pid)
        return process

    def log(self, name):
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def start_master(self):
        self.master = self.spawn(self.master_host, [REPO / "master.py", MASTER_PORT, "--host",
                                                    self.master_host.address], "master.log")
        wait_until(lambda: self.answers() or self.master.poll() is not None,
                   what="the master to answer")
        assert self.master.poll() is None, self.log("master.log")

    def add_worker(self, label, wait=True):
        host = self.network.add_host(label)
        self.start_worker(host, wait)
        return host

    def start_worker(self, host, wait=True):
        process = self.spawn(host, [REPO / "worker.py", self.address, WORKER_PORT,
                                    "--host", host.address, "--workdir", self.workdir],
                             f"worker-{host.label}-{next(self.starts)}.log",
                             prefix=self.worker_prefix)
        self.workers[host] = process
        if wait:
            wait_until(lambda: self.state(host) == "ready" or process.poll() is not None,
                       what=f"the worker on {host.label} to register")
            assert process.poll() is None, process.args
        return process

    def ask(self, message, host=None, env=None):
        """Send a client message from the client host (or `host`); the reply, or None."""
        result = subprocess.run((host or self.client).command(
            [PYTHON, ASK, self.address, json.dumps(message)]), capture_output=True,
            env=env or self.env, timeout=COMMAND_TIMEOUT)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def answers(self):
        return self.ask({"message_type": "cluster_status"}) is not None

    def workers_listed(self):
        reply = self.ask({"message_type": "cluster_status"}) or {}
        return {w["host"]: w for w in reply.get("workers", [])}

    def state(self, host):
        """The master's view of the worker on `host` (its newest record)."""
        listed = self.workers_listed().get(host.address)
        return listed["state"] if listed else None

    def send_job(self, *args, env=None, timeout=120):
        return subprocess.run(self.client.command(
            [PYTHON, REPO / "send_job.py", self.address, *args]), cwd=self.workdir,
            env=env or self.env, capture_output=True, timeout=timeout)

    def send_job_async(self, *args):
        return subprocess.Popen(self.client.command(
            [PYTHON, REPO / "send_job.py", self.address, *args]), cwd=self.workdir,
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def job(self, job_id):
        return self.ask({"message_type": "job_status", "job_id": job_id}) or {}

    def reboot(self, host):
        """All of the host's processes killed; a new worker started there."""
        for pid in host.pids():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        wait_until(lambda: not host.pids(), what=f"{host.label}'s processes to die")
        return self.start_worker(host, wait=False)

    def stop(self):
        for sid in self.sessions:
            kill_session(sid)
        wait_until(lambda: not sessions_members(set(self.sessions)), what="the cluster to end")
