"""`scripts/cluster.sh`, the three-node cluster for people: it starts from nothing, reports
its quorum, takes a node's SIGKILL (another leads, topics keep two in-sync replicas) and its
restart (back in every ISR), is safe to start twice, and stops (the quorum's last node, which
cannot finish a controlled shutdown alone, is killed after 30 s) and wipes.

Run: scripts/test.sh, or `python3 -m unittest discover -s tests/scripts -v`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import ports

ROOT = Path(__file__).resolve().parents[2]


class Cluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="orderflow-cluster-"))
        cls.port = ports.free_base([0, 1, 2, 100, 101, 102])
        cls.env = {**os.environ, "ORDERFLOW_CLUSTER_DIR": str(cls.dir / "state"), "ORDERFLOW_CLUSTER_PORT": str(cls.port)}
        cls.bootstrap = ",".join(f"127.0.0.1:{cls.port + i}" for i in range(3))

    @classmethod
    def tearDownClass(cls):
        subprocess.run(["scripts/cluster.sh", "wipe"], cwd=ROOT, env=cls.env, capture_output=True, timeout=120)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def run_script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["scripts/cluster.sh", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300)

    def kafka(self, *args: str) -> str:
        done = subprocess.run(["scripts/kafka.sh", *args, "--bootstrap-server", self.bootstrap],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout

    def isr(self, topic: str) -> list[set[str]]:
        described = self.kafka("topics", "--describe", "--topic", topic)
        return [set(m.group(1).split(",")) for m in re.finditer(r"Isr: ([0-9,]+)", described)]

    def test_start_kill_restart_stop(self):
        started = self.run_script("start")
        self.assertEqual(started.returncode, 0, started.stderr[-3000:])
        self.assertIn("the cluster answers on", started.stderr)
        self.assertRegex(started.stdout, r"LeaderId:\s+[123]")
        again = self.run_script("start")
        self.assertEqual(again.returncode, 0, again.stderr[-3000:])
        self.assertEqual(again.stderr.count("already runs"), 3, "a second start reuses every node")

        self.kafka("topics", "--create", "--topic", "drill", "--partitions", "3")
        self.assertTrue(all(isr == {"1", "2", "3"} for isr in self.isr("drill")), self.isr("drill"))
        killed = self.run_script("kill", "2")
        self.assertEqual(killed.returncode, 0, killed.stderr)
        deadline = time.time() + 60
        while time.time() < deadline and any("2" in isr for isr in self.isr("drill")):
            time.sleep(1)
        self.assertTrue(all(isr == {"1", "3"} for isr in self.isr("drill")), "two in-sync replicas left")
        status = self.run_script("status")
        self.assertIn("node 2: not running", status.stdout)
        self.assertRegex(status.stdout, r"LeaderId:\s+[13]", "the quorum goes on with two voters")
        self.assertNotEqual(self.run_script("kill", "7").returncode, 0, "an unknown node is refused")

        restarted = self.run_script("start")
        self.assertEqual(restarted.returncode, 0, restarted.stderr[-3000:])
        deadline = time.time() + 90
        while time.time() < deadline and not all(isr == {"1", "2", "3"} for isr in self.isr("drill")):
            time.sleep(1)
        self.assertTrue(all(isr == {"1", "2", "3"} for isr in self.isr("drill")), "node 2 caught up")

        stopped = self.run_script("stop")
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        self.assertLessEqual(stopped.stderr.count("SIGKILL"), 1, "at most the quorum's last node is killed")
        deadline = time.time() + 15
        while time.time() < deadline and not all(ports.free(self.port + i) for i in range(3)):
            time.sleep(0.5)
        self.assertTrue(all(ports.free(self.port + i) for i in range(3)), f"no broker left listening: {stopped.stderr}")
        wiped = self.run_script("wipe")
        self.assertEqual(wiped.returncode, 0, wiped.stderr)
        self.assertFalse((self.dir / "state").exists())


if __name__ == "__main__":
    unittest.main()
