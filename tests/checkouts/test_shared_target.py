"""Two checkouts building in one shared target directory never run each other's code.

Cargo treats a workspace crate as up to date when its files are older than its last build,
whichever checkout that build came from; and the schema catalog's build script once baked its
checkout's path in when it was compiled. Here two copies of this checkout share one cache
directory the way scripts/lib.sh sets it up (`choose_target_dir`): the second copy carries one
more event schema and *older* file times (the case cargo's freshness check gets wrong), and each
build's `orderflow-schemas embedded` must list exactly its own checkout's schemas — also after
the other checkout is deleted. A checkout arriving while another one holds the directory builds
in a directory of its own.

Run: scripts/test.sh, or `python3 -m unittest discover -s tests/checkouts -v` (a cold build of
the schema crate and its dependencies: a few minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """{"type": "record", "name": "CheckoutProbe", "namespace": "io.orderflow.events",
 "fields": [{"name": "order_id", "type": {"type": "string", "logicalType": "uuid"}}]}
"""


def copy_checkout(destination: Path, age_seconds: int) -> Path:
    """The files git knows of in this checkout (committed or not), with their times set back."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    stamp = time.time() - age_seconds
    for name in filter(None, listed):
        source = ROOT / name
        if not source.is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        os.utime(target, (stamp, stamp))
    return destination


class SharedTargetDirectory(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = Path(tempfile.mkdtemp(prefix="orderflow-checkouts-"))
        cls.cache = cls.work / "cache"
        cls.env = {k: v for k, v in os.environ.items() if k != "CARGO_TARGET_DIR"}
        cls.env["ORDERFLOW_CACHE"] = str(cls.cache)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def shell(self, checkout: Path, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"source scripts/lib.sh && {script}"], cwd=checkout, env=self.env,
                              capture_output=True, text=True, timeout=1800)

    def embedded(self, checkout: Path) -> tuple[set[str], str]:
        """Builds the schema CLI in `checkout` as the scripts do; its embedded catalog, and the
        target directory it was built in."""
        built = self.shell(checkout, "cargo build --quiet -p orderflow-schemas --bin orderflow-schemas"
                                     " && echo \"$CARGO_TARGET_DIR\"")
        self.assertEqual(built.returncode, 0, built.stderr[-3000:])
        target = built.stdout.strip().splitlines()[-1]
        listed = subprocess.run([f"{target}/debug/orderflow-schemas", "embedded"], capture_output=True, text=True,
                                check=True).stdout.split()
        return set(listed), target

    def test_each_checkout_runs_its_own_schemas(self):
        first = copy_checkout(self.work / "first", age_seconds=3600)
        second = copy_checkout(self.work / "second", age_seconds=7200)
        (second / "schemas/avro/orders/CheckoutProbe.v1.avsc").write_text(PROBE)
        os.utime(second / "schemas/avro/orders/CheckoutProbe.v1.avsc", (time.time() - 7200,) * 2)

        mine, shared = self.embedded(first)
        self.assertIn("orders/OrderPlaced.v2", mine)
        self.assertNotIn("orders/CheckoutProbe.v1", mine)
        self.assertEqual(shared, str(self.cache / "target"))

        # Older files than the first checkout's build: cargo alone would call it up to date.
        theirs, target = self.embedded(second)
        self.assertEqual(target, shared, "one shared directory")
        self.assertEqual(theirs, mine | {"orders/CheckoutProbe.v1"}, "the second checkout's own schemas")

        again, _ = self.embedded(first)
        self.assertEqual(again, mine, "back to the first checkout's schemas")

        # The checkout that built last is deleted: the next build reads the one it runs in.
        theirs, _ = self.embedded(second)
        self.assertIn("orders/CheckoutProbe.v1", theirs)
        shutil.rmtree(second)
        after, _ = self.embedded(first)
        self.assertEqual(after, mine, "a complete catalog from the checkout that exists")

    def test_a_checkout_arriving_while_another_holds_the_directory_builds_apart(self):
        holder = copy_checkout(self.work / "holder", age_seconds=0)
        other = copy_checkout(self.work / "other", age_seconds=0)
        # The holder's script runs (its shell keeps the shared lock) until we stop it.
        running = subprocess.Popen(["bash", "-c", "source scripts/lib.sh && echo \"$CARGO_TARGET_DIR\" && sleep 60"],
                                   cwd=holder, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            held = running.stdout.readline().strip()
            self.assertEqual(held, str(self.cache / "target"))
            chosen = self.shell(other, "echo \"$CARGO_TARGET_DIR\"")
            self.assertEqual(chosen.returncode, 0, chosen.stderr)
            self.assertTrue(chosen.stdout.strip().startswith(str(self.cache / "target-")), chosen.stdout)
            self.assertIn("another checkout is using", chosen.stderr)
            same = self.shell(holder, "echo \"$CARGO_TARGET_DIR\"")
            self.assertEqual(same.stdout.strip(), held, "the same checkout shares its directory")
        finally:
            # The whole session: `sleep` holds the lock it inherited too.
            os.killpg(running.pid, 9)
            running.communicate()


if __name__ == "__main__":
    unittest.main()
