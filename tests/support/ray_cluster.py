"""A real multi-node Ray cluster on 127.0.0.1: the test head node plus worker nodes, each its own raylet.

Each worker node is ``ray start --address=HEAD --block`` in a session of its own, with its own ports and
a custom resource of its own (``node-<k>``) so a test can tell where work ran. Stopping kills exactly
the sessions started here (never ``ray stop``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.support.ray_head import RayHead, session_pids, stop_session
from tests.support.s3server import free_ports

WORKER_PORTS = 21_000


class WorkerNode:
    def __init__(self, head: RayHead, index: int, num_cpus: int, resources: dict, object_store_mib: int) -> None:
        self.head, self.index, self.resources = head, index, {f"node-{index}": 1, **resources}
        node, objects, agent, agent_grpc, runtime_env, metrics = free_ports(6)  # distinct: Ray refuses repeats
        args = [str(Path(sys.executable).parent / "ray"), "start", f"--address=127.0.0.1:{head.gcs_port}", "--block",
                "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--resources={json.dumps(self.resources)}",
                f"--object-store-memory={object_store_mib << 20}", f"--node-manager-port={node}",
                f"--object-manager-port={objects}", f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
                f"--metrics-export-port={metrics}", "--disable-usage-stats"]
        # each node's own range for its worker processes, below the ephemeral range that the listening
        # ports above come from (so no worker can take a port another node is about to bind)
        first = WORKER_PORTS + 300 * index
        args += [f"--min-worker-port={first}", f"--max-worker-port={first + 200}"]
        log = open(head.temp_dir / f"node-{index}.log", "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=head.env,
                                        start_new_session=True)

    def stop(self, grace: float = 10) -> None:
        stop_session(self.process, grace)


class RayCluster:
    """A head node that runs drivers only (0 CPUs) and ``len(nodes)`` worker nodes."""

    def __init__(self, temp_dir: Path) -> None:
        self.head = RayHead(temp_dir)
        self.nodes: list[WorkerNode] = []

    def start(self, workers: int = 2, cpus_per_node: int = 2, resources: dict | None = None,
              object_store_mib: int = 400, timeout: float = 120) -> "RayCluster":
        self.head.start(num_cpus=0, object_store_mib=object_store_mib)
        try:
            for k in range(workers):  # one at a time: a node's ports are picked once the previous one holds its own
                self.nodes.append(WorkerNode(self.head, k, cpus_per_node, resources or {}, object_store_mib))
                self._wait_for_nodes(k + 2, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_nodes(self, count: int, timeout: float) -> None:
        """Until the head's state API lists ``count`` alive nodes."""
        code = ("import ray, json; ray.init(logging_level='ERROR'); "
                "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))")
        deadline = time.monotonic() + timeout
        env = {**self.head.env, "RAY_ADDRESS": f"127.0.0.1:{self.head.gcs_port}"}
        while time.monotonic() < deadline:
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
            if result.returncode == 0 and int(result.stdout.strip().splitlines()[-1]) >= count:
                return
            time.sleep(0.5)  # poll the state API again (each poll starts a driver, itself ~1 s)
        raise RuntimeError(f"the cluster did not reach {count} nodes within {timeout:.0f} s")

    def node_ids(self) -> dict[str, str]:
        """``{node id: "node-<k>" or "head"}`` from the cluster's own view."""
        code = ("import ray, json; ray.init(logging_level='ERROR'); print(json.dumps("
                "{n['NodeID']: next((r for r in n['Resources'] if r.startswith('node-')), 'head') "
                "for n in ray.nodes() if n['Alive']}))")
        env = {**self.head.env, "RAY_ADDRESS": f"127.0.0.1:{self.head.gcs_port}"}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def pids(self) -> list[int]:
        return self.head.session_pids() + [p for n in self.nodes for p in session_pids(n.process.pid)]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.head.stop()
