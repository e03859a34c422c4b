"""The service manifest (ops/services.toml) against the two other places that list the services:
docker-compose.yml (read by docker-compose itself) and the Helm chart (rendered by Helm's SDK).
The local stack reads the manifest directly (scripts/lib_stack.sh), and the harness and the
binaries' flags are checked by tests/tests/service_manifest.rs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import yaml

from test_deploy import CHART, EVERYTHING, MINIMAL, ROOT, merge, render, secret_files

sys.path.insert(0, str(ROOT / "scripts"))
import manifest  # noqa: E402

SERVICES = manifest.load()
BY_NAME = {s["name"]: s for s in SERVICES}
# compose services that are not orderflow services: one-shot set-up steps and the demo's load.
COMPOSE_ONLY = {"migrate", "schemas", "stock", "demo-load"}


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def read_env(database: str) -> str:
    return f"ORDERFLOW_{database.upper()}_DATABASE_URL"


def first_url(name: str) -> tuple[str, int]:
    listener = BY_NAME[name]["listen"][0]
    return listener["url_env"], listener["port"]


class ManifestRules(unittest.TestCase):
    def test_a_broken_manifest_is_refused_naming_the_service_and_the_rule(self):
        text = (ROOT / "ops" / "services.toml").read_text()
        cases = {
            "needs a later service": (text.replace('needs = ["payment-simulator"]', 'needs = ["analytics"]'),
                                      "service payment: needs analytics, which is not a service listed before it"),
            "a port twice": (text.replace("local = 101", "local = 102"), "local port offset 102 is payment's too"),
            "an unknown field": (text.replace('name = "inventory"\n', 'name = "inventory"\nreplicas = 2\n'),
                                 "service inventory: unknown field(s) replicas"),
            "a missing binary": (text.replace('binary = "lag-exporter"\n', ""), "service lag-exporter: missing binary"),
        }
        for case, (broken, expected) in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "ops").mkdir()
                path = Path(tmp) / "ops" / "services.toml"
                path.write_text(broken)
                for service in manifest.load():  # the homes exist relative to the copy
                    (Path(tmp) / service["home"]).mkdir(parents=True, exist_ok=True)
                with self.assertRaises(manifest.ManifestError) as refused:
                    manifest.load(path)
                self.assertIn(expected, str(refused.exception))

    def test_the_scripts_read_it_and_say_why_when_it_is_broken(self):
        lines = subprocess.run([sys.executable, str(ROOT / "scripts/manifest.py"), "shell"],
                               check=True, capture_output=True, text=True).stdout.splitlines()
        self.assertEqual([line.split("|")[0] for line in lines], [s["name"] for s in SERVICES])
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "scripts"
            copy.mkdir()
            (copy / "manifest.py").write_text((ROOT / "scripts/manifest.py").read_text())
            (Path(tmp) / "ops").mkdir()
            (Path(tmp) / "ops/services.toml").write_text("[[service]]\nname = 'x'\n")
            broken = subprocess.run([sys.executable, str(copy / "manifest.py"), "shell"], capture_output=True, text=True)
        self.assertEqual(broken.returncode, 1)
        self.assertIn("service x: missing binary, home, health, listen", broken.stderr)


class ComposeAgrees(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        env = {**os.environ, "COMPOSE_PROFILES": "relay"}
        result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        cls.services = {n: s for n, s in services.items() if not s.get("profiles") or "relay" in s["profiles"]}

    def test_every_service_of_the_manifest_and_no_other(self):
        ours = {name for name, s in self.services.items() if "build" in s} - COMPOSE_ONLY
        self.assertEqual(ours, set(BY_NAME))

    def test_each_runs_its_binary_on_its_database_ports_and_settings(self):
        for s in SERVICES:
            with self.subTest(s["name"]):
                service = self.services[s["name"]]
                env = service["environment"]
                self.assertEqual(service["command"][0], s["binary"])
                for listener in s["listen"]:
                    self.assertEqual(env[listener["env"]], f"0.0.0.0:{listener['port']}")
                port = s["listen"][0]["port"]
                self.assertEqual(service["healthcheck"]["test"][-1], f"http://127.0.0.1:{port}{s['health']}")
                if "database" in s:
                    self.assertRegex(env[s["database_env"]], rf"^postgres://[^@]+@postgres:5432/{s['database']}$")
                urls = ([s["database_env"]] if "database" in s else []) + [read_env(r) for r in s.get("reads", [])]
                self.assertEqual(sorted(k for k in env if k.endswith("DATABASE_URL")), sorted(urls))
                for read in s.get("reads", []):
                    self.assertRegex(env[read_env(read)], rf"^postgres://[^@]+@postgres:5432/{read}$")
                for key, value in s.get("env", {}).items():
                    self.assertEqual(env[key], value)
                for need in s.get("needs", []):
                    url_env, need_port = first_url(need)
                    self.assertEqual(env[url_env], f"http://{need}:{need_port}")
                    self.assertEqual(service["depends_on"][need]["condition"], "service_healthy")


class ChartAgrees(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Everything on (the simulators too), relays publishing.
        cls.values = merge(EVERYTHING, {"outbox": {"publisher": "relay"}})
        cls.docs = render(cls.values)
        cls.deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                           for d in cls.docs if d["kind"] == "Deployment"}
        cls.keys = merge(yaml.safe_load((CHART / "values.yaml").read_text()), cls.values)["database"]["keys"]

    def container(self, name):
        return self.deployments[name]["spec"]["template"]["spec"]["containers"][0]

    def test_every_service_of_the_manifest_and_no_other(self):
        self.assertEqual(set(self.deployments), set(BY_NAME))
        minimal = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in render(MINIMAL) if d["kind"] == "Deployment"}
        self.assertEqual(minimal, {s["name"] for s in SERVICES if not s.get("optional")}, "optional: only when asked")

    def test_each_runs_its_binary_on_its_own_database_ports_probes_and_settings(self):
        for s in SERVICES:
            with self.subTest(s["name"]):
                c = self.container(s["name"])
                env = {e["name"]: e for e in c["env"]}
                self.assertEqual(c["args"][0], s["binary"])
                self.assertEqual([p["containerPort"] for p in c["ports"]], [l["port"] for l in s["listen"]])
                for listener in s["listen"]:
                    self.assertEqual(env[listener["env"]]["value"], f"0.0.0.0:{listener['port']}")
                self.assertIn(s["health"], {c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]})
                files = secret_files(self.deployments[s["name"]]["spec"]["template"]["spec"], c)
                secrets = [(name, key) for name, (_, key) in files.items() if name.endswith("DATABASE_URL")]
                if "database" in s:
                    self.assertIn(camel(s["database"]), self.keys, "the chart's database.keys has no key for it")
                expected = [(s["database_env"], self.keys[camel(s["database"])])] if "database" in s else []
                expected += [(read_env(r), self.keys[camel(r)]) for r in s.get("reads", [])]
                self.assertEqual(sorted(secrets), sorted(expected), "its own database, the ones it reads, no other")
                for key, value in s.get("env", {}).items():
                    self.assertEqual(env[key]["value"], value)
                for need in s.get("needs", []):
                    url_env, port = first_url(need)
                    self.assertEqual(env[url_env]["value"], f"http://orderflow-{need}:{port}")

    def test_consumer_groups_and_topics_are_the_manifests(self):
        consumers = {s["name"]: s for s in SERVICES if "group" in s}
        scaled = {so["spec"]["scaleTargetRef"]["name"].removeprefix("orderflow-"): so
                  for so in self.docs if so["kind"] == "ScaledObject"}
        self.assertEqual(set(scaled), set(consumers))
        for name, s in consumers.items():
            triggers = scaled[name]["spec"]["triggers"]
            self.assertEqual({t["metadata"]["consumerGroup"] for t in triggers}, {s["group"]}, name)
            self.assertEqual(sorted(t["metadata"]["topic"] for t in triggers), sorted(s["topics"]), name)
        lag = {e["name"]: e.get("value") for e in self.container("lag-exporter")["env"]}
        self.assertEqual(lag["ORDERFLOW_LAG_GROUPS"].split(","), [s["group"] for s in consumers.values()])


if __name__ == "__main__":
    unittest.main()
