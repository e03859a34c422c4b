"""The service manifest (ops/services.toml), read and checked once for every reader.

    python3 scripts/manifest.py shell      one line per service for scripts/lib_stack.sh
    python3 scripts/manifest.py databases  the databases the services own, one per line
    python3 scripts/manifest.py json       the whole manifest, checked (tests/tests/service_manifest.rs)

`load()` is what tests/deploy/test_services.py compares compose and the chart with. A manifest
that breaks a rule (a field missing, a name twice, a need on a later or unknown service, two
services on one local port) is refused with the service and the rule named.
"""

import json
import sys
import tomllib
from pathlib import Path

MANIFEST = Path(__file__).resolve().parent.parent / "ops" / "services.toml"
REQUIRED = ("name", "binary", "home", "health", "listen")
KNOWN = set(REQUIRED) | {"database", "database_env", "reads", "needs", "group", "topics", "env", "optional"}


class ManifestError(Exception):
    pass


def load(path=MANIFEST):
    with open(path, "rb") as f:
        services = tomllib.load(f).get("service", [])
    if not services:
        raise ManifestError(f"{path}: no [[service]] entries")
    seen, ports, owned = {}, {}, set()
    root = Path(path).resolve().parent.parent
    for index, service in enumerate(services):
        name = service.get("name", f"#{index + 1}")
        where = f"{path}: service {name}"
        missing = [field for field in REQUIRED if field not in service]
        if missing:
            raise ManifestError(f"{where}: missing {', '.join(missing)}")
        unknown = sorted(set(service) - KNOWN)
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}")
        if name in seen:
            raise ManifestError(f"{where}: the name is used twice")
        if ("database" in service) != ("database_env" in service):
            raise ManifestError(f"{where}: database and database_env go together")
        if ("group" in service) != ("topics" in service):
            raise ManifestError(f"{where}: group and topics go together")
        if not (root / service["home"]).is_dir():
            raise ManifestError(f"{where}: home {service['home']} is not a folder")
        if not service["listen"]:
            raise ManifestError(f"{where}: listen is empty (every service answers its health check)")
        for listener in service["listen"]:
            for field in ("env", "port", "local"):
                if field not in listener:
                    raise ManifestError(f"{where}: a listener lacks {field}")
            other = ports.get(listener["local"])
            if other:
                raise ManifestError(f"{where}: local port offset {listener['local']} is {other}'s too")
            ports[listener["local"]] = name
        for database in service.get("reads", []):
            if database not in owned:
                raise ManifestError(f"{where}: reads {database}, which no service listed before it owns")
        if "database" in service:
            owned.add(service["database"])
        for need in service.get("needs", []):
            if need not in seen:
                raise ManifestError(f"{where}: needs {need}, which is not a service listed before it")
            if "url_env" not in seen[need]["listen"][0]:
                raise ManifestError(f"{where}: needs {need}, whose first listener has no url_env")
        seen[name] = service
    return services


def shell_lines(services):
    """name|binary|database|database_env|health|env:local:url_env,…|NAME=value,…|read,…"""
    for s in services:
        listens = ",".join(f"{l['env']}:{l['local']}:{l.get('url_env', '')}" for l in s["listen"])
        env = ",".join(f"{k}={v}" for k, v in s.get("env", {}).items())
        reads = ",".join(s.get("reads", []))
        fields = [s["name"], s["binary"], s.get("database", ""), s.get("database_env", ""), s["health"], listens, env, reads]
        if any("|" in field for field in fields):
            raise ManifestError(f"service {s['name']}: '|' in a field")
        yield "|".join(fields)


def main(argv):
    try:
        services = load()
        if argv[1:] == ["shell"]:
            print("\n".join(shell_lines(services)))
        elif argv[1:] == ["json"]:
            print(json.dumps(services))
        elif argv[1:] == ["databases"]:
            print("\n".join(dict.fromkeys(s["database"] for s in services if "database" in s)))
        else:
            print(__doc__.strip(), file=sys.stderr)
            return 2
    except (ManifestError, tomllib.TOMLDecodeError, OSError) as error:
        print(f"service manifest: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
