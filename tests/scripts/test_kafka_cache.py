"""The scripts' Kafka install (`ensure_kafka` in scripts/lib_kafka.sh) on a cache of its own:
fetched once from Maven Central with the pom's pinned plugin, reused as it is on the next run,
and fetched again — with a line saying why — when a jar is damaged, a jar is missing, or the
checksum list was never written (a fetch cut short).

Run: scripts/test.sh, or `python3 -m unittest discover -s tests/scripts -v`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class KafkaCache(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cache = Path(tempfile.mkdtemp(prefix="orderflow-kafka-cache-"))
        # Maven's own repository from the machine's cache when there is one (what is fetched
        # from it is still checked); otherwise everything comes from Maven Central.
        shared_m2 = Path(os.environ.get("ORDERFLOW_CACHE", Path.home() / ".cache/orderflow")) / "m2"
        if shared_m2.is_dir():
            shutil.copytree(shared_m2, cls.cache / "m2")
        cls.env = {**os.environ, "ORDERFLOW_CACHE": str(cls.cache)}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.cache, ignore_errors=True)

    def ensure(self) -> tuple[Path, str]:
        done = subprocess.run(["bash", "-c", "source scripts/lib.sh && ensure_kafka && echo \"$ORDERFLOW_KAFKA_LIBS\""],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=900)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        return Path(done.stdout.strip().splitlines()[-1]), done.stderr

    def test_fetched_once_reused_then_fetched_again_when_damaged(self):
        libs, said = self.ensure()
        self.assertTrue(str(libs).startswith(str(self.cache / "kafka")), libs)
        version = next(libs.glob("kafka_2.13-*.jar")).name.removeprefix("kafka_2.13-").removesuffix(".jar")
        self.assertGreaterEqual(tuple(int(p) for p in version.split(".")[:2]), (4, 1), "Kafka 4.1 or newer")
        for jar in ("kafka-tools-", "log4j-core-", "log4j-slf4j-impl-"):
            self.assertTrue(any(libs.glob(f"{jar}*.jar")), f"{jar}* on the classpath")
        self.assertIn("fetching Apache Kafka", said)

        _, said = self.ensure()
        self.assertNotIn("fetching", said, "a complete cache is reused as it is")

        jar = next(libs.glob("kafka-clients-*.jar"))
        jar.write_bytes(jar.read_bytes()[:1000])
        _, said = self.ensure()
        self.assertIn("incomplete or damaged", said)
        self.assertGreater(jar.stat().st_size, 1000, "fetched again whole")

        next(libs.glob("kafka-raft-*.jar")).unlink()
        _, said = self.ensure()
        self.assertIn("incomplete or damaged", said)
        self.assertTrue(any(libs.glob("kafka-raft-*.jar")))

        (libs.parent / "SHA256SUMS").unlink()
        _, said = self.ensure()
        self.assertIn("incomplete or damaged", said)
        self.assertTrue((libs.parent / "SHA256SUMS").is_file())

        # The jars work: a Kafka CLI class answers.
        java = subprocess.run(["bash", "-c", "source scripts/lib.sh && ensure_kafka && "
                               "kafka_java kafka.tools.StorageTool random-uuid"],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300)
        self.assertEqual(java.returncode, 0, java.stderr[-2000:])
        self.assertRegex(java.stdout.strip(), r"^[A-Za-z0-9_-]{22}$")


if __name__ == "__main__":
    unittest.main()
