"""Deployment checks: the Helm chart rendered by Helm's own SDK, docker-compose.yml read by
docker-compose, the Debezium connector against the outbox migrations, and the image's binaries.
No cluster and no Docker engine: what a reviewer checks, checked on every run.

Run: scripts/test.sh (which installs helm-python-sdk, kubernetes-validate and docker-compose), or
`python3 -m unittest discover -s tests/deploy -v` with those installed.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "orderflow"
KUBE_VERSION = kubernetes_validate.latest_version()  # the newest the validator knows (1.37 here)

# What an install must be given; everything else has a default.
MINIMAL = {
    "kafka": {"bootstrap": "kafka.kafka:9092"},
    "database": {"existingSecret": "orderflow-databases"},
    "registry": {"auth": {"existingSecret": "orderflow-registry-credentials"}},
    "providers": {
        "payment": {"url": "https://payments.example.com"},
        "notification": {"url": "https://mail.example.com"},
    },
    "orderApi": {"auth": {"issuer": "https://idp.example.com", "jwksConfigMap": "orderflow-jwks"}},
}
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
# Every optional part on, simulators and CDC included: the widest render.
EVERYTHING = {
    **copy.deepcopy(MINIMAL),
    "simulators": {"enabled": True},
    "outbox": {"publisher": "cdc"},
    "autoscaling": {"keda": {"enabled": "true"}},
    "monitoring": {"prometheusOperator": "true"},
    "topics": {"strimzi": {"enabled": True, "cluster": "shop"}},
    "tracing": {"otlpEndpoint": "http://otel-collector.observability:4318"},
}
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule", "KafkaTopic"}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=None)
def _render(values_json: str) -> dict:
    with helm.Chart.load(CHART) as chart:
        return chart.render(json.loads(values_json), name="orderflow", namespace="shop", is_install=True)


def render(values: dict) -> list[dict]:
    """The rendered manifests (parsed afresh each call, so a test may not change another's)."""
    manifests = _render(json.dumps(values, sort_keys=True))
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def render_error(values: dict) -> str:
    try:
        render(values)
    except helm.HelmError as e:
        return str(e)
    raise AssertionError(f"values were accepted: {json.dumps(values)[:300]}")


def pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["spec"]


def containers(spec: dict):
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def secret_files(spec: dict, container: dict) -> dict[str, tuple[str, str]]:
    """The settings a container reads from Secret files: `{SETTING: (secret, key)}` for each
    `SETTING_FILE` (or path setting, as `PGSSLROOTCERT`) whose file a projected Secret volume of
    the pod provides."""
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for env in container.get("env", []):
        directory, _, file = env.get("value", "").rpartition("/")
        if directory not in mounts:
            continue
        for source in volumes[mounts[directory]].get("projected", {}).get("sources", []):
            for item in source.get("secret", {}).get("items", []):
                if item["path"] == file:
                    files[env["name"].removesuffix("_FILE")] = (source["secret"]["name"], item["key"])
    return files


def image_binaries() -> set[str]:
    """The binaries the Dockerfile puts in the image: every bin target of the workspace but
    the test harness's (it builds `--workspace --bins --exclude orderflow-tests`)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--workspace --bins --exclude orderflow-tests" in dockerfile, "the Dockerfile's build line changed"
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    return {
        t["name"]
        for p in meta["packages"] if p["name"] != "orderflow-tests"
        for t in p["targets"] if "bin" in t["kind"]
    }


class ChartRenders(unittest.TestCase):
    """Default, production and everything-on values render, lint clean and validate."""

    cases = {"minimal": MINIMAL, "production": PRODUCTION, "everything": EVERYTHING}

    def test_lint_is_clean(self):
        for name, values in self.cases.items():
            with self.subTest(values=name):
                report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
                problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
                self.assertEqual(problems, [], f"helm lint ({name})")

    def test_every_manifest_validates_against_kubernetes(self):
        for name, values in self.cases.items():
            docs = render(values)
            self.assertGreater(len(docs), 30)
            for doc in docs:
                if doc["kind"] in CRD_KINDS:
                    continue  # no upstream schema in the validator; asserted field by field below
                with self.subTest(values=name, kind=doc["kind"], name=doc["metadata"]["name"]):
                    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    def test_no_manifest_is_rendered_twice(self):
        for name, values in self.cases.items():
            keys = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in render(values)]
            self.assertEqual(len(keys), len(set(keys)), name)


class ReviewersChecks(unittest.TestCase):
    def setUp(self):
        self.docs = render(EVERYTHING)
        self.production = render(PRODUCTION)

    def test_every_long_running_container_has_probes_and_every_container_limits(self):
        for docs in (self.docs, self.production):
            for owner, spec in pod_specs(docs):
                for c in containers(spec):
                    where = f'{owner["kind"]}/{owner["metadata"]["name"]}/{c["name"]}'
                    limits, requests = c["resources"].get("limits", {}), c["resources"].get("requests", {})
                    self.assertTrue({"cpu", "memory"} <= limits.keys(), f"{where}: limits {limits}")
                    self.assertTrue({"cpu", "memory"} <= requests.keys(), f"{where}: requests {requests}")
                    long_running = owner["kind"] == "Deployment" or c.get("restartPolicy") == "Always"
                    if long_running:
                        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                            self.assertIn(probe, c, f"{where} has no {probe}")
                            port = c[probe]["httpGet"]["port"]
                            self.assertIn(port, [p["name"] for p in c["ports"]], f"{where}: {probe} on an unknown port")
                    else:
                        self.assertTrue(owner["spec"].get("activeDeadlineSeconds"), f"{where}: a Job needs a deadline")

    def test_probes_hit_the_endpoints_the_binaries_serve(self):
        served = {  # program -> paths its HTTP server answers (see each binary's router)
            "order-api": {"/healthz", "/readyz"}, "orderflow-registry": {"/healthz"}, "lag-exporter": {"/healthz", "/readyz"},
            "outbox-relay": {"/healthz"}, "payment": {"/healthz", "/readyz"}, "order-service": {"/healthz", "/readyz"},
            "inventory": {"/healthz", "/readyz"}, "notifications": {"/healthz", "/readyz"}, "analytics": {"/healthz", "/readyz"},
            "payment-simulator": {"/healthz"},
            "notification-simulator": {"/healthz"}, "orderflow-console": {"/healthz", "/readyz"},
        }
        for owner, spec in pod_specs(self.docs):
            for c in containers(spec):
                if "livenessProbe" not in c:
                    continue
                program = c["args"][0]
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    self.assertIn(c[probe]["httpGet"]["path"], served[program], f"{program} {probe}")

    def test_pods_run_as_non_root_read_only_without_capabilities(self):
        for docs in (self.docs, self.production):
            for owner, spec in pod_specs(docs):
                self.assertTrue(spec["securityContext"]["runAsNonRoot"], owner["metadata"]["name"])
                self.assertNotEqual(spec["securityContext"].get("runAsUser"), 0)
                self.assertFalse(spec["automountServiceAccountToken"])
                for c in containers(spec):
                    sc = c["securityContext"]
                    where = f'{owner["metadata"]["name"]}/{c["name"]}'
                    self.assertTrue(sc["readOnlyRootFilesystem"], where)
                    self.assertFalse(sc["allowPrivilegeEscalation"], where)
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"], where)
                    self.assertNotIn("add", sc["capabilities"], where)
                    self.assertFalse(c["image"].endswith(":latest"), where)

    def test_no_secret_holds_a_literal_password(self):
        for docs in (self.docs, self.production):
            self.assertEqual([d for d in docs if d["kind"] == "Secret"], [], "the chart makes no Secrets")
            text = yaml.safe_dump_all(docs)
            self.assertIsNone(re.search(r"postgres(ql)?://[^\s\"':@/]+:[^\s\"'@/]+@", text), "a database URL with a password")
            self.assertNotRegex(text.lower(), r"password\s*[:=]\s*['\"]?\w")
            for owner, spec in pod_specs(docs):
                for c in containers(spec):
                    files = secret_files(spec, c)
                    for env in c.get("env", []):
                        # Secrets are files: none in the environment, every _FILE backed by a Secret.
                        self.assertNotIn("secretKeyRef", env.get("valueFrom", {}), f'{c["name"]}: {env["name"]}')
                        secret = re.search(r"DATABASE_URL|KAFKA_PROPERTIES|PASSWORD|REGISTRY_USERS|API_KEY", env["name"])
                        if secret:
                            self.assertTrue(env["name"].endswith("_FILE"), f'{c["name"]}: {env["name"]} must be a file')
                            self.assertIn(env["name"].removesuffix("_FILE"), files, f'{c["name"]}: {env["name"]}')
                    for volume in spec.get("volumes", []):
                        if "projected" in volume:
                            self.assertEqual(volume["projected"]["defaultMode"], 0o440)

    def test_keda_never_scales_a_group_past_its_partitions(self):
        for values, docs in ((EVERYTHING, self.docs), (PRODUCTION, self.production)):
            merged = merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
            scaled = [d for d in docs if d["kind"] == "ScaledObject"]
            self.assertEqual(len(scaled), 5, "one ScaledObject per consumer group")
            for so in scaled:
                topics = [t["metadata"]["topic"] for t in so["spec"]["triggers"]]
                partitions = min(merged["topics"][t]["partitions"] for t in topics)
                self.assertLessEqual(so["spec"]["maxReplicaCount"], partitions, so["metadata"]["name"])
                self.assertGreaterEqual(so["spec"]["maxReplicaCount"], so["spec"]["minReplicaCount"])
                for t in so["spec"]["triggers"]:
                    self.assertEqual(t["type"], "kafka")
                    self.assertEqual(t["metadata"]["bootstrapServers"], merged["kafka"]["bootstrap"])
                target = so["spec"]["scaleTargetRef"]["name"]
                deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == target)
                self.assertNotIn("replicas", deployment["spec"], f"{target}: KEDA owns the replica count")
        # Asking for more replicas than partitions fails the install, naming the group.
        error = render_error(merge(EVERYTHING, {"consumers": {"payment": {"maxReplicas": 13}}}))
        self.assertIn("payment maxReplicas 13 exceeds the 12 partitions of orders", error)

    def test_hooks_migrate_then_register_schemas_before_any_app(self):
        for docs in (self.docs, self.production):
            jobs = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Job"}
            self.assertEqual(set(jobs), {"migrate", "schemas"})
            for job in jobs.values():
                self.assertEqual(set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")), {"pre-install", "pre-upgrade"})
            weight = {k: int(j["metadata"]["annotations"]["helm.sh/hook-weight"]) for k, j in jobs.items()}
            self.assertLess(weight["migrate"], weight["schemas"])
            self.assertEqual(jobs["migrate"]["spec"]["template"]["spec"]["containers"][0]["args"], ["orderflow-migrate"])
            self.assertEqual(jobs["schemas"]["spec"]["template"]["spec"]["containers"][0]["args"], ["orderflow-schemas", "register"])
            # Apps are plain resources (installed after pre-install hooks), and only verify the schema.
            for d in docs:
                if d["kind"] == "Deployment":
                    self.assertNotIn("helm.sh/hook", d["metadata"].get("annotations", {}))
                    env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
                    self.assertEqual(env["ORDERFLOW_MIGRATIONS"], "verify", d["metadata"]["name"])
            # The migrate Job is given every database the release's apps use.
            def database_keys(d):
                spec = d["spec"]["template"]["spec"]
                return {key for name, (_, key) in secret_files(spec, spec["containers"][0]).items() if name.endswith("DATABASE_URL")}
            migrate_keys = database_keys(jobs["migrate"])
            app_keys = set().union(*(database_keys(d) for d in docs if d["kind"] == "Deployment"))
            self.assertGreaterEqual(len(app_keys), 6)
            self.assertEqual(app_keys - migrate_keys, set())

    def test_bad_values_are_rejected_by_the_schema(self):
        cases = {
            "kafka.replicationFactr": ({"kafka": {"replicationFactr": 3}}, "replicationFactr"),
            "orderApi.replicas as text": ({"orderApi": {"replicas": "two"}}, "/orderApi/replicas"),
            "outbox.publisher": ({"outbox": {"publisher": "both"}}, "/outbox/publisher"),
            "root filesystem writable": ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
            "typo at the top": ({"consumer": {}}, "consumer"),
            "bootstrap without a port": ({"kafka": {"bootstrap": "kafka.kafka"}}, "/kafka/bootstrap"),
            "keda enabled: yes": ({"autoscaling": {"keda": {"enabled": "yes"}}}, "/autoscaling/keda/enabled"),
        }
        for name, (bad, needle) in cases.items():
            with self.subTest(case=name):
                self.assertIn(needle, render_error(merge(MINIMAL, bad)))
        # Required values missing: a clear message, not a broken manifest.
        without = lambda key: {k: v for k, v in MINIMAL.items() if k != key}
        self.assertIn("kafka.bootstrap is required", render_error(without("kafka")))
        self.assertIn("database.existingSecret is required", render_error(without("database")))
        self.assertIn("providers.payment.url is required", render_error(without("providers")))

    def test_network_policies_cover_every_pod_and_allow_only_what_it_reaches(self):
        policies = {d["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: d for d in self.docs if d["kind"] == "NetworkPolicy"}
        pods = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for d in self.docs if d["kind"] in ("Deployment", "Job")}
        self.assertEqual(pods - set(policies), set(), "pods without a NetworkPolicy")

        def egress_ports(component):
            return {p["port"] for rule in policies[component]["spec"]["egress"] for p in rule.get("ports", [])}

        for component, policy in policies.items():
            self.assertEqual(set(policy["spec"]["policyTypes"]), {"Ingress", "Egress"}, component)
        self.assertNotIn(9092, egress_ports("order-api"), "order-api has no business with the brokers")
        self.assertNotIn(5432, egress_ports("lag-exporter"), "the lag exporter reads only the brokers")
        self.assertIn(8090, egress_ports("payment"), "payment reaches its (simulated) provider")
        self.assertNotIn(8090, egress_ports("inventory"))
        # With CDC the relays are pruners: database only, no brokers.
        self.assertEqual(egress_ports("relay-orders"), {53, 5432, 4317, 4318})

    def test_order_api_is_told_its_token_issuer_and_keys(self):
        def api(values):
            docs = render(values)
            deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "orderflow-order-api")
            policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "orderflow-order-api")
            spec = deployment["spec"]["template"]["spec"]
            env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
            ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
            return env, spec, ports

        # A ConfigMap: mounted read-only, read as a file; no egress beyond the usual.
        env, spec, ports = api(MINIMAL)
        self.assertEqual(env["ORDERFLOW_API_JWT_ISSUER"], "https://idp.example.com")
        self.assertEqual(env["ORDERFLOW_API_JWT_AUDIENCE"], "orderflow-api")
        self.assertEqual(env["ORDERFLOW_API_JWKS_FILE"], "/etc/orderflow/jwks/jwks.json")
        self.assertNotIn("ORDERFLOW_API_JWKS_URL", env)
        self.assertIn({"name": "jwks", "configMap": {"name": "orderflow-jwks"}}, spec["volumes"])
        self.assertIn({"name": "jwks", "mountPath": "/etc/orderflow/jwks", "readOnly": True}, spec["containers"][0]["volumeMounts"])
        self.assertNotIn(443, ports)
        # A URL: egress to the issuer on 443, no mount.
        env, spec, ports = api(PRODUCTION)
        self.assertTrue(env["ORDERFLOW_API_JWKS_URL"].startswith("https://idp.example.com/"))
        self.assertNotIn("ORDERFLOW_API_JWKS_FILE", env)
        self.assertEqual([v["name"] for v in spec["volumes"]], ["tmp", "secrets"], "no JWKS mount, only its database URL")
        self.assertIn(443, ports)
        # Without an issuer, or without keys, or with both kinds of keys: the install fails saying so.
        no_issuer = merge(MINIMAL, {"orderApi": {"auth": {"issuer": ""}}})
        self.assertIn("orderApi.auth.issuer is required", render_error(no_issuer))
        no_keys = merge(MINIMAL, {"orderApi": {"auth": {"jwksConfigMap": ""}}})
        self.assertIn("orderApi.auth.jwksUrl or orderApi.auth.jwksConfigMap is required", render_error(no_keys))
        both = merge(MINIMAL, {"orderApi": {"auth": {"jwksUrl": "https://idp.example.com/jwks"}}})
        self.assertIn("not both", render_error(both))

    def test_registry_writes_need_credentials_only_the_schema_hook_holds(self):
        secret = "orderflow-registry-credentials"
        for values in (MINIMAL, PRODUCTION):
            docs = render(values)
            holders = {}
            for owner, spec in pod_specs(docs):
                for c in containers(spec):
                    for name, (source, key) in secret_files(spec, c).items():
                        if source == secret:
                            holders.setdefault(key, set()).add(f'{owner["metadata"]["labels"]["app.kubernetes.io/component"]}/{c["name"]}')
            self.assertEqual(holders["password"], {"schemas/schemas"}, "the writer's password: the hook's container only")
            self.assertEqual(holders["user"], {"schemas/schemas"})
            self.assertEqual(holders["users"], {"registry/registry", "schemas/registry"}, "the users file: the registry only")
            registry = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-registry"))
            env = {e["name"]: e.get("value") for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]}
            self.assertEqual(env["ORDERFLOW_REGISTRY_ANONYMOUS_READS"], "true")
        # Closed reads: every service reads as the reader; the hook still writes as the writer.
        closed = render(merge(MINIMAL, {"registry": {"auth": {"anonymousReads": False}}}))
        for owner, spec in pod_specs(closed):
            name = owner["metadata"]["labels"]["app.kubernetes.io/component"]
            files = secret_files(spec, spec["containers"][0])
            if owner["kind"] == "Deployment" and name != "registry":
                self.assertEqual(files["ORDERFLOW_REGISTRY_PASSWORD"], (secret, "reader-password"), name)
        # The payment provider's API key: a file in payment's pod (and the simulator's, which then
        # demands it), from the Secret production values name.
        keyed = render(merge(EVERYTHING, {"providers": {"payment": {"apiKeySecret": {"name": "pay-key"}}}}))
        for owner, spec in pod_specs(keyed):
            name = owner["metadata"]["labels"]["app.kubernetes.io/component"]
            files = secret_files(spec, spec["containers"][0])
            expected = {"payment": "ORDERFLOW_PROVIDER_API_KEY", "payment-simulator": "ORDERFLOW_SIMULATOR_API_KEY"}.get(name)
            keys = {k: v for k, v in files.items() if k.endswith("API_KEY")}
            self.assertEqual(keys, {expected: ("pay-key", "api-key")} if expected else {}, name)
        # Without the Secret the install fails saying what it is for.
        without = merge(MINIMAL, {"registry": {"auth": {"existingSecret": ""}}})
        self.assertIn("registry.auth.existingSecret is required", render_error(without))

    def test_postgres_tls_and_provider_cas_come_from_secrets_as_files(self):
        # Production values: verify-full and the CA for every container holding a database URL,
        # nothing for one without; payment trusts the provider's private CA when named.
        values = merge(PRODUCTION, {"providers": {"payment": {"caSecret": {"name": "pay-ca"}},
                                                  "notification": {"caSecret": {"name": "mail-ca", "key": "root.pem"}}}})
        seen = set()
        for owner, spec in pod_specs(render(values)):
            name = owner["metadata"]["labels"]["app.kubernetes.io/component"]
            for c in containers(spec):
                files = secret_files(spec, c)
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                has_database = any(k.endswith("DATABASE_URL") for k in files)
                self.assertEqual(files.get("PGSSLROOTCERT"), ("orderflow-postgres-ca", "ca.crt") if has_database else None, f"{name}/{c['name']}")
                if has_database:
                    self.assertEqual(env.get("PGSSLMODE"), "verify-full", f"{name}/{c['name']}")
                cas = {k: v for k, v in files.items() if k.endswith("PROVIDER_CA_CERT")}
                expected = {"payment": {"ORDERFLOW_PROVIDER_CA_CERT": ("pay-ca", "ca.crt")},
                            "notifications": {"ORDERFLOW_NOTIFY_PROVIDER_CA_CERT": ("mail-ca", "root.pem")}}.get(name, {})
                self.assertEqual(cas, expected, name)
                seen.add(name) if has_database else None
        self.assertTrue({"order-api", "payment", "registry", "migrate"} <= seen, seen)
        # Without them: libpq's defaults, nothing mounted.
        for owner, spec in pod_specs(render(MINIMAL)):
            for c in containers(spec):
                self.assertNotIn("PGSSLROOTCERT", secret_files(spec, c))
                self.assertNotIn("PGSSLMODE", {e["name"] for e in c.get("env", [])})
        self.assertIn("sslMode", render_error(merge(MINIMAL, {"database": {"tls": {"sslMode": "verify-everything"}}})))

    def test_each_group_chooses_its_ordering_and_retry_mode(self):
        def runtime_env(docs):
            wanted = ("ORDERFLOW_ORDERING", "ORDERFLOW_RETRY_MODE", "ORDERFLOW_QUARANTINE_AFTER_DEAD_LETTER")
            return {owner["metadata"]["labels"]["app.kubernetes.io/component"]:
                    {e["name"]: e["value"] for e in spec["containers"][0].get("env", []) if e["name"] in wanted}
                    for owner, spec in pod_specs(docs) if owner["kind"] == "Deployment"}
        # Unset: each binary's own defaults, nothing in the environment.
        self.assertTrue(all(not env for env in runtime_env(render(MINIMAL)).values()))
        chosen = runtime_env(render(merge(MINIMAL, {"consumers": {
            "payment": {"retryMode": "quarantine", "quarantineAfterDeadLetter": "follow"},
            "inventory": {"ordering": "key", "retryMode": "quarantine"},
            "analytics": {"ordering": "partition"}}})))
        self.assertEqual(chosen["payment"], {"ORDERFLOW_RETRY_MODE": "quarantine", "ORDERFLOW_QUARANTINE_AFTER_DEAD_LETTER": "follow"})
        self.assertEqual(chosen["inventory"], {"ORDERFLOW_ORDERING": "key", "ORDERFLOW_RETRY_MODE": "quarantine"})
        self.assertEqual(chosen["analytics"], {"ORDERFLOW_ORDERING": "partition"})
        # The quarantine keeps a key's order: refused in partition order, naming the group.
        error = render_error(merge(MINIMAL, {"consumers": {"orderService": {"retryMode": "quarantine"}}}))
        self.assertIn("consumers.orderService: retryMode quarantine needs ordering key", error)
        error = render_error(merge(MINIMAL, {"consumers": {"payment": {"ordering": "partition", "retryMode": "quarantine"}}}))
        self.assertIn("consumers.payment: retryMode quarantine needs ordering key", error)
        self.assertIn("retryMode", render_error(merge(MINIMAL, {"consumers": {"payment": {"retryMode": "park"}}})))

    def test_cdc_and_relay_are_chosen_by_one_value(self):
        def relay_modes(docs):
            return {d["metadata"]["name"]: next(e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "ORDERFLOW_RELAY_MODE")
                    for d in docs if d["kind"] == "Deployment" and d["spec"]["template"]["spec"]["containers"][0]["args"] == ["outbox-relay"]}
        self.assertEqual(set(relay_modes(self.docs).values()), {"prune"})
        self.assertEqual(set(relay_modes(render(MINIMAL)).values()), {"publish"})
        self.assertEqual(len(relay_modes(render(MINIMAL))), 3, "one relay per outbox database")

    def test_monitoring_rules_and_dashboards(self):
        rules_file = yaml.safe_load((CHART / "files" / "prometheus" / "orderflow-rules.yaml").read_text())
        rule = next(d for d in self.production if d["kind"] == "PrometheusRule")
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus-stack")
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        self.assertEqual(len(alerts), sum(1 for g in rules_file["groups"] for r in g["rules"] if "alert" in r))
        base = PRODUCTION["alerts"]["runbookBaseUrl"]
        for a in alerts:
            self.assertRegex(a["annotations"]["runbook_url"], "^" + re.escape(base) + "#[a-z0-9-]+$", a["alert"])
            self.assertIn("{{ $", a["annotations"]["summary"], "alert templates reach Prometheus unrendered")
        monitors = [d for d in self.production if d["kind"] == "ServiceMonitor"]
        services = {d["metadata"]["name"]: d for d in self.production if d["kind"] == "Service"}
        for m in monitors:
            service = services[m["metadata"]["name"]]
            self.assertIn(m["spec"]["endpoints"][0]["port"], [p["name"] for p in service["spec"]["ports"]])
        self.assertEqual(len(monitors), len([d for d in self.production if d["kind"] == "Deployment"]))
        dashboards = next(d for d in self.production if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboards"))
        self.assertEqual(dashboards["metadata"]["labels"]["grafana_dashboard"], "1")
        shipped = sorted(p.name for p in (CHART / "files" / "grafana").glob("*.json"))
        self.assertEqual(sorted(k.removeprefix("orderflow-") for k in dashboards["data"]), shipped)
        for text in dashboards["data"].values():
            self.assertIn("panels", json.loads(text))
        # Without the operator (and on "auto" with no cluster to ask), no CRDs are rendered.
        kinds = {d["kind"] for d in render(MINIMAL)}
        self.assertFalse(kinds & CRD_KINDS, kinds & CRD_KINDS)

    def test_strimzi_topics_match_what_the_services_use(self):
        topics = {d["spec"]["topicName"]: d for d in self.production if d["kind"] == "KafkaTopic"}
        groups = {"payment": ["orders"], "order-service": ["payments", "orders"], "inventory": ["orders"],
                  "notifications": ["orders"], "analytics": ["orders"]}
        expected = {"orders", "payments", "console-audit"} | {f"{t}.{g}.{kind}" for g, ts in groups.items() for t in ts for kind in ("retry", "DLT")}
        self.assertEqual(set(topics), expected)
        self.assertEqual(topics["console-audit"]["spec"]["partitions"], 1, "the audit log reads in order")
        self.assertEqual(topics["console-audit"]["spec"]["config"]["retention.ms"], str(9600 * 3600 * 1000))
        self.assertEqual(topics["orders"]["spec"]["partitions"], 24)
        self.assertEqual(topics["orders.payment.retry"]["spec"]["partitions"], 24)
        self.assertEqual(topics["orders.payment.DLT"]["spec"]["partitions"], 1)
        self.assertEqual(topics["orders"]["spec"]["config"]["retention.ms"], str(168 * 3600 * 1000))
        for t in topics.values():
            self.assertEqual(t["metadata"]["namespace"], "kafka")
            self.assertEqual(t["metadata"]["labels"]["strimzi.io/cluster"], "shop")
            self.assertEqual(t["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")

    def test_hpa_scales_order_api_and_pdbs_select_real_pods(self):
        hpa = next(d for d in self.production if d["kind"] == "HorizontalPodAutoscaler")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], "orderflow-order-api")
        deployments = {d["metadata"]["name"]: d for d in self.production if d["kind"] == "Deployment"}
        self.assertNotIn("replicas", deployments["orderflow-order-api"]["spec"])
        for pdb in (d for d in self.production if d["kind"] == "PodDisruptionBudget"):
            target = deployments[pdb["metadata"]["name"]]
            self.assertEqual(pdb["spec"]["selector"]["matchLabels"], target["spec"]["selector"]["matchLabels"])

    def test_simulators_only_when_enabled(self):
        for docs, present in ((render(MINIMAL), False), (self.docs, True)):
            names = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
            self.assertEqual("orderflow-payment-simulator" in names, present)
            self.assertEqual("orderflow-notification-simulator" in names, present)

    def test_every_program_the_chart_runs_is_in_the_image(self):
        binaries = image_binaries()
        for owner, spec in pod_specs(self.docs):
            for c in containers(spec):
                self.assertIn(c["args"][0], binaries, f'{owner["metadata"]["name"]}/{c["name"]}')


class Image(unittest.TestCase):
    def test_the_runtime_base_has_every_shared_library_the_binaries_load(self):
        """The image is distroless/cc: glibc, libgcc, libstdc++, OpenSSL 3. Anything else a binary
        links must be copied by the Dockerfile (zlib, for librdkafka). Checked with ldd on the
        binaries scripts/test.sh built."""
        distroless_cc = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libssl.so.3", "libcrypto.so.3",
                         "libstdc++.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libgomp.so.1"}
        dockerfile = (ROOT / "Dockerfile").read_text()
        copied = set(re.findall(r"gcc -print-file-name=(\S+?)\)", dockerfile))
        self.assertEqual(copied, {"libz.so.1"})
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
        binaries = [target / b for b in sorted(image_binaries()) if (target / b).exists()]
        if not binaries:
            self.skipTest(f"no binaries built in {target} (scripts/test.sh builds them first)")
        needed = set()
        for binary in binaries:
            out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
            needed |= {line.split()[0].rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}
        needed.discard("ld-linux-x86-64.so.2")
        self.assertEqual(needed - distroless_cc - copied, set(), "libraries the image lacks")
        self.assertIn("libz.so.1", needed, "zlib is copied for a reason")


class Compose(unittest.TestCase):
    def config(self, *profiles: str) -> dict:
        """`docker-compose config` output, with only the services the profiles start (compose
        1.29's `config` prints every service; `up` starts those without a profile or with an
        active one)."""
        env = {**os.environ, "COMPOSE_PROFILES": ",".join(profiles)}
        result = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        config = yaml.safe_load(result.stdout)
        config["services"] = {n: s for n, s in config["services"].items()
                              if not s.get("profiles") or set(s["profiles"]) & set(profiles)}
        return config

    def test_compose_config_accepts_the_file_and_every_command_is_in_the_image(self):
        config = self.config("relay")
        binaries = image_binaries()
        ours = {name: s for name, s in config["services"].items() if "build" in s}
        self.assertGreaterEqual(len(ours), 15)
        for name, service in ours.items():
            self.assertIn(service["command"][0], binaries, name)
            health = service.get("healthcheck", {}).get("test")
            if health:
                self.assertEqual(health[:2], ["CMD", "orderflow-healthcheck"], f"{name}: the image has no shell")
                self.assertIn("orderflow-healthcheck", binaries)

    def test_compose_kafka_runs_the_repositorys_broker_settings(self):
        """compose's Kafka is the pom's release with ops/kafka/server.properties (the local and
        test brokers' file); its environment adds only where it listens and stores."""
        kafka = self.config("relay")["services"]["kafka"]
        pom = (ROOT / "ops/kafka/pom.xml").read_text()
        version = re.search(r"<kafka.version>(.+?)</kafka.version>", pom).group(1)
        self.assertEqual(kafka["image"], f"apache/kafka:{version}")
        # docker-compose 1.29 prints short syntax (source:target:mode); newer ones a mapping.
        mounts = [(v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2]) for v in kafka["volumes"]]
        config = [source for source, target in mounts if target == "/mnt/shared/config/server.properties"]
        self.assertEqual(len(config), 1, kafka["volumes"])
        self.assertEqual((ROOT / config[0]).resolve(), (ROOT / "ops/kafka/server.properties").resolve())
        where = {"KAFKA_NODE_ID", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                 "KAFKA_INTER_BROKER_LISTENER_NAME", "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LOG_DIRS"}
        self.assertLessEqual(set(kafka["environment"]), where, "broker settings belong in ops/kafka/server.properties")
        props = dict(line.split("=", 1) for line in (ROOT / "ops/kafka/server.properties").read_text().splitlines()
                     if line.strip() and not line.startswith("#"))
        self.assertEqual(props["process.roles"], "broker,controller")
        self.assertEqual(props["auto.create.topics.enable"], "false")

    def test_compose_starts_in_order_and_keeps_data(self):
        services = self.config("relay")["services"]
        self.assertEqual(services["kafka"]["image"].split(":")[0], "apache/kafka")
        for name in ("order-api", "payment", "order-service", "inventory", "notifications", "analytics", "relay-orders"):
            depends = services[name]["depends_on"]
            self.assertEqual(depends["migrate"]["condition"], "service_completed_successfully", name)
            self.assertEqual(depends["schemas"]["condition"], "service_completed_successfully", name)
        self.assertEqual(services["schemas"]["depends_on"]["registry"]["condition"], "service_healthy")
        self.assertEqual(services["migrate"]["depends_on"]["postgres"]["condition"], "service_healthy")
        for name in ("postgres", "kafka", "registry", "order-api", "prometheus", "grafana"):
            self.assertIn("healthcheck", services[name], name)
        for name in ("postgres", "kafka", "prometheus", "grafana"):
            self.assertTrue(any(":" in str(v) and not str(v).startswith(".") for v in services[name]["volumes"]), name)
        # Prometheus loads the chart's rules; Grafana the chart's dashboards: one copy of each.
        mounts = " ".join(str(v) for v in services["prometheus"]["volumes"] + services["grafana"]["volumes"])
        self.assertIn("helm/orderflow/files/prometheus/orderflow-rules.yaml", mounts)
        self.assertIn("helm/orderflow/files/grafana", mounts)
        self.assertIn("OTEL_EXPORTER_OTLP_ENDPOINT", services["order-api"]["environment"])

    def test_compose_order_api_trusts_the_key_its_demo_load_signs_with(self):
        """order-api reads compose/auth/jwks.json; demo-load signs with compose/auth/issuer.pem:
        a token signed with that key (by the project's orderflow-token) names a key the JWKS
        publishes, under the issuer order-api accepts."""
        services = self.config("relay")["services"]
        api, load = services["order-api"], services["demo-load"]
        self.assertEqual(api["environment"]["ORDERFLOW_API_JWT_ISSUER"], load["environment"]["ORDERFLOW_API_JWT_ISSUER"])
        mounts = lambda s: {(v["target"] if isinstance(v, dict) else v.split(":")[1]):
                            (v["source"] if isinstance(v, dict) else v.split(":")[0]) for v in s["volumes"]}
        jwks_file = Path(mounts(api)[api["environment"]["ORDERFLOW_API_JWKS_FILE"]])
        key_file = Path(mounts(load)[load["environment"]["ORDERFLOW_API_TOKEN_KEY"]])
        target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/orderflow/target"))
        token = subprocess.run(
            [str(target / os.environ.get("ORDERFLOW_PROFILE", "debug") / "orderflow-token"), "sign", "--key", str(ROOT / key_file),
             "--issuer", api["environment"]["ORDERFLOW_API_JWT_ISSUER"], "--subject", "compose-check"],
            check=True, capture_output=True, text=True).stdout.strip()
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
        published = {k["kid"] for k in json.loads((ROOT / jwks_file).read_text())["keys"]}
        self.assertIn(header["kid"], published)
        self.assertEqual(header["alg"], "EdDSA")

    def test_prometheus_config_is_valid_and_scrapes_every_service(self):
        """Debian's promtool checks compose's Prometheus config with the chart's rules in it."""
        config = yaml.safe_load((ROOT / "compose" / "prometheus" / "prometheus.yml").read_text())
        rules = CHART / "files" / "prometheus" / "orderflow-rules.yaml"
        self.assertEqual(config["rule_files"], ["/etc/prometheus/rules/orderflow-rules.yaml"])
        config["rule_files"] = [str(rules)]  # where compose mounts it, here
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prometheus.yml"
            path.write_text(yaml.safe_dump(config))
            result = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        targets = {t.split(":")[0] for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
        services = self.config("relay")["services"]
        with_metrics = {n for n, s in services.items() if "build" in s and (s.get("healthcheck") or {}).get("test")}
        self.assertEqual(with_metrics - targets - {"payment-simulator", "notification-simulator"}, set(), "services nobody scrapes")

    def test_relay_and_cdc_never_run_together(self):
        def publishers(services):
            return sorted(n for n, s in services.items()
                          if s.get("environment", {}).get("ORDERFLOW_RELAY_MODE") == "publish" or n == "connect")
        relay = self.config("relay")["services"]
        cdc = self.config("cdc")["services"]
        self.assertEqual(publishers(relay), ["relay-inventory", "relay-orders", "relay-payments"])
        self.assertEqual(publishers(cdc), ["connect"])
        self.assertEqual(self.config()["services"].keys() & {"relay-orders", "connect"}, set())
        self.assertEqual((ROOT / ".env").read_text().count("COMPOSE_PROFILES=relay"), 1, "relay is the default")


class Connector(unittest.TestCase):
    def outbox_columns(self) -> set[str]:
        """The outbox table's columns as the migrations leave them (CREATE, then ALTER ADD/DROP)."""
        columns: set[str] = set()
        for sql in sorted((ROOT / "outbox" / "migrations").glob("*.sql")):
            text = re.sub(r"--[^\n]*", "", sql.read_text())
            create = re.search(r"CREATE TABLE\s+outbox\s*\((.*?)\);", text, re.S | re.I)
            if create:
                for line in create.group(1).split(","):
                    word = line.strip().split()[0] if line.strip() else ""
                    if word and word.upper() not in {"PRIMARY", "UNIQUE", "CONSTRAINT", "CHECK", "FOREIGN"}:
                        columns.add(word)
            for name in re.findall(r"ALTER TABLE\s+outbox\s+ADD COLUMN\s+(?:IF NOT EXISTS\s+)?(\w+)", text, re.I):
                columns.add(name)
            for name in re.findall(r"ALTER TABLE\s+outbox\s+DROP COLUMN\s+(?:IF EXISTS\s+)?(\w+)", text, re.I):
                columns.discard(name)
        return columns

    def test_connector_names_only_columns_the_outbox_has(self):
        columns = self.outbox_columns()
        self.assertTrue({"event_id", "message_key", "payload", "topic", "traceparent"} <= columns, columns)
        config = json.loads((ROOT / "connect" / "outbox-connector.json").read_text())
        named = {
            config["transforms.outbox.table.field.event.id"],
            config["transforms.outbox.table.field.event.key"],
            config["transforms.outbox.table.field.event.payload"],
            config["transforms.outbox.route.by.field"],
        } | {entry.split(":")[0] for entry in config["transforms.outbox.table.fields.additional.placement"].split(",")}
        self.assertEqual(named - columns, set(), "connector columns missing from the outbox table")
        self.assertEqual(config["transforms.outbox.table.field.event.key"], "message_key", "the order id keys the record")
        placed = dict(e.split(":")[0::2] for e in config["transforms.outbox.table.fields.additional.placement"].split(","))
        # Headers the consumers read, under the names the relay uses.
        self.assertEqual(placed["event_id"], "event_id")
        self.assertEqual(placed["traceparent"], "traceparent")
        self.assertEqual(placed["event_type"], "event_type")
        self.assertEqual(placed["schema_version"], "schema_version")
        self.assertEqual(config["value.converter"], "io.debezium.converters.BinaryDataConverter")
        self.assertEqual(config["table.include.list"], "public.outbox")

    def test_the_relay_sets_the_same_headers(self):
        relay = (ROOT / "outbox" / "src" / "relay.rs").read_text()
        config = json.loads((ROOT / "connect" / "outbox-connector.json").read_text())
        headers = {e.split(":")[2] for e in config["transforms.outbox.table.fields.additional.placement"].split(",")}
        # The relay names its headers from the contract module (orderflow_schemas::headers).
        contract = (ROOT / "schemas" / "src" / "headers.rs").read_text().split("pub mod ")[0]
        names = dict(re.findall(r'pub const (\w+): &str = "(\w+)";', contract))
        used = re.findall(r'Header \{ key: headers::(\w+)', relay)
        self.assertTrue(used, "the relay sets its headers from orderflow_schemas::headers")
        self.assertEqual(headers, {names[name] for name in used})


if __name__ == "__main__":
    unittest.main()
