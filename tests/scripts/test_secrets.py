"""No secret leaks: the whole local stack (every service of ops/services.toml, started by
scripts/lib_stack.sh as the demo starts it) runs with known secrets — a database password in
every database URL, Kafka client properties holding a password, the registry writer's
password, the payment provider's API key, bearer tokens — under traffic and refusals; then every service's output, every
/metrics page, every error body and every process's command line is searched for them.

Run by scripts/test.sh (which starts the suite's Postgres and Kafka and exports their
addresses, the build directory and the virtualenv), or by hand with those exported.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
import tomllib
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import ports

ROOT = Path(__file__).resolve().parents[2]


def need(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set: run ./scripts/test.sh, which sets it"
    return value


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class SecretsStayHidden(unittest.TestCase):
    def test_no_known_secret_in_any_output_metrics_error_body_or_command_line(self):
        admin = need("ORDERFLOW_PG_ADMIN_URL")
        bootstrap = need("ORDERFLOW_KAFKA_BOOTSTRAP")
        target = need("CARGO_TARGET_DIR")
        tag = secrets.token_hex(4)
        known = {
            "database password": f"dbpw-{secrets.token_hex(12)}",
            "kafka password": f"kafkapw-{secrets.token_hex(12)}",
            "a wrong registry password": f"guess-{secrets.token_hex(12)}",
        }
        role = f"leak_{tag}"
        subprocess.run(["psql", "-q", "-c", f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{known['database password']}'"],
                       env={**os.environ, "PGDATABASE": "postgres", **libpq(admin)}, check=True)
        state = Path(tempfile.mkdtemp(prefix="orderflow-secrets-"))
        (state / "kafka.properties").write_text(f"client.id=orderflow-{tag},sasl.password={known['kafka password']}\n")
        # The manifest's offsets reach +108 (and the drill's metrics +300); below the ephemeral range.
        port_base = ports.free_base(list(range(0, 110)), low=20000)
        host = admin.split("@", 1)[1]
        env = {
            **os.environ,
            "ORDERFLOW_STATE_DIR": str(state),
            "ORDERFLOW_PORT_BASE": str(port_base),
            "ORDERFLOW_DB_PREFIX": role,
            "ORDERFLOW_PG_ADMIN_URL": f"postgres://{role}:{known['database password']}@{host}",
            "ORDERFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "ORDERFLOW_KAFKA_NAMESPACE": f"leak{tag}",
            "ORDERFLOW_KAFKA_PROPERTIES_FILE": str(state / "kafka.properties"),
            "ORDERFLOW_PROFILE": os.environ.get("ORDERFLOW_PROFILE", "debug"),
            "RUST_LOG": "debug,h2=info,hyper=info,rdkafka=info,sqlx=info",
        }
        # The stack stays up until this test closes the script's standard input.
        script = 'source scripts/lib.sh; trap stop_started_services EXIT; start_stack; echo READY; read -r _'
        stack = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            started = ""
            for line in stack.stdout:
                started += line
                if line.strip() == "READY":
                    break
            self.assertIn("READY", started, f"the stack did not start:\n{started}")
            self.exercise(state, port_base, known, target)
        finally:
            if stack.poll() is None:
                stack.stdin.close()
                stack.stdout.close()
                try:
                    stack.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(stack.pid, signal.SIGKILL)
            dbs = subprocess.run(["psql", "-Atq", "-c", f"select datname from pg_database where datname like '{role}%'"],
                                 env={**os.environ, "PGDATABASE": "postgres", **libpq(admin)}, capture_output=True, text=True).stdout.split()
            for db in dbs:
                subprocess.run(["psql", "-q", "-c", f'drop database if exists "{db}" with (force)'],
                               env={**os.environ, "PGDATABASE": "postgres", **libpq(admin)})
            subprocess.run(["psql", "-q", "-c", f"drop role if exists {role}"], env={**os.environ, "PGDATABASE": "postgres", **libpq(admin)})

    def exercise(self, state: Path, port_base: int, known: dict, target: str):
        profile = os.environ.get("ORDERFLOW_PROFILE", "debug")
        known["registry writer password"] = (state / "auth" / "registry-password").read_text().strip()
        known["payment provider API key"] = (state / "secrets" / "provider-api-key").read_text().strip()
        token = subprocess.run(
            [f"{target}/{profile}/orderflow-token", "sign", "--key", str(state / "auth" / "issuer.pem"),
             "--issuer", "orderflow-local", "--subject", "leak-test", "--scope", "orders:write orders:read"],
            check=True, capture_output=True, text=True).stdout.strip()
        known["bearer token"] = token
        manifest = tomllib.loads((ROOT / "ops" / "services.toml").read_text())["service"]
        port = {s["name"]: port_base + s["listen"][0]["local"] for s in manifest}
        api = f"http://127.0.0.1:{port['order-api']}"
        registry = f"http://127.0.0.1:{port['registry']}"
        bodies = []
        # Traffic: orders placed and read, with the token; refusals with wrong credentials.
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        order = {"customer_id": "c-1", "customer_email": "ada@example.com", "currency": "EUR",
                 "items": [{"sku": "TEE-BLK-M", "quantity": 1, "unit_price_minor": 1250}]}
        for i in range(5):
            status, body = http("POST", f"{api}/orders", json.dumps(order).encode(), {**auth, "Idempotency-Key": f"leak-{i}"})
            self.assertEqual(status, 202, body)
            bodies.append(body)
        order_id = json.loads(bodies[0])["order_id"]
        bodies.append(http("GET", f"{api}/orders/{order_id}?wait_for=PAID,PAYMENT_FAILED&timeout=20s", headers=auth)[1])
        bodies.append(http("POST", f"{api}/orders", b"{}", {**auth, "Idempotency-Key": "leak-bad"})[1])
        bodies.append(http("GET", f"{api}/orders/{order_id}", headers={"Authorization": f"Bearer {token}x"})[1])
        wrong = base64.b64encode(f"schema-admin:{known['a wrong registry password']}".encode()).decode()
        status, body = http("DELETE", f"{registry}/subjects/x", headers={"Authorization": f"Basic {wrong}"})
        self.assertEqual(status, 401, body)
        bodies.append(body)
        time.sleep(2)
        # Every /metrics page, every log, every command line.
        pages = {}
        for s in manifest:
            for listener in s["listen"]:
                status, body = http("GET", f"http://127.0.0.1:{port_base + listener['local']}/metrics")
                if status == 200:
                    pages[f"{s['name']}:{listener['local']}"] = body
        self.assertGreaterEqual(len(pages), 8, f"metrics pages read: {sorted(pages)}")
        logs = {p.name: p.read_text(errors="replace") for p in (state / "run").glob("*.log")}
        self.assertGreaterEqual(len(logs), len(manifest), f"logs: {sorted(logs)}")
        self.assertTrue(any("schema registered" in t or "listening" in t for t in logs.values()), "debug logs were written")
        cmdlines = {}
        for pid_file in (state / "run").glob("*.pid"):
            pid = pid_file.read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists():
                cmdlines[pid_file.stem] = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        self.assertGreaterEqual(len(cmdlines), len(manifest), f"running: {sorted(cmdlines)}")
        places = {**{f"log {k}": v for k, v in logs.items()}, **{f"/metrics {k}": v for k, v in pages.items()},
                  **{f"argv {k}": v for k, v in cmdlines.items()}, **{f"body {i}": b for i, b in enumerate(bodies)}}
        for what, secret in known.items():
            for where, text in places.items():
                self.assertNotIn(secret, text, f"the {what} appears in {where}")
        # The search would have found them: the services were given the password (in their
        # database URL files), and the stack ran on it (the order was read back).
        url_file = state / "secrets" / "orders-database-url"
        self.assertIn(known["database password"], url_file.read_text())
        self.assertEqual(url_file.stat().st_mode & 0o777, 0o600)
        self.assertEqual(json.loads(bodies[5])["order_id"], order_id)


def libpq(url: str) -> dict:
    """A postgres:// URL as libpq's environment (the password never on a command line)."""
    from urllib.parse import unquote, urlparse
    u = urlparse(url)
    env = {"PGHOST": u.hostname or "localhost", "PGPORT": str(u.port or 5432)}
    if u.username:
        env["PGUSER"] = unquote(u.username)
    if u.password:
        env["PGPASSWORD"] = unquote(u.password)
    return env


if __name__ == "__main__":
    unittest.main()
