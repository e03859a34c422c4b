# What a fresh machine lacks: Debian packages and the Python tools (a virtualenv).
# Sourced by scripts/lib.sh (which sets ROOT, the ORDERFLOW_* defaults, log and die).

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# Debian packages the build and the local stack need.
ensure_apt_packages() {
    # prometheus: promtool checks the alert rules, and the dashboards are tested on a live server.
    # docker-compose: `docker-compose config` checks docker-compose.yml (no Docker engine needed).
    # python3-venv: the deployment tests' own Python environment (ensure_python_tools).
    # openssl: the TLS tests (Postgres, the providers) make their certificate authority with it.
    # procps: scripts/cluster.sh tells a live node from a zombie with ps.
    ensure_debian_packages build-essential pkg-config libssl-dev zlib1g-dev postgresql postgresql-client curl \
        ca-certificates python3 python3-venv prometheus docker-compose openssl procps
}

# The named Debian packages, installed when missing.
ensure_debian_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# The deployment tests' Python packages, pinned, in a virtualenv of the project's own (Debian's
# Python refuses system-wide pip installs). Exports ORDERFLOW_PYTHON.
# Confluent's Python client checks the registry as a real client sees it (basic auth); schemathesis
# fuzzes order-api from its OpenAPI document.
PYTHON_TOOLS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.2
    "confluent-kafka[avro,schemaregistry]==2.16.1" schemathesis==4.32.5)
ensure_python_tools() {
    local venv="${ORDERFLOW_VENV:-$HOME/.cache/orderflow/venv}"
    export ORDERFLOW_PYTHON="$venv/bin/python"
    if [ -x "$ORDERFLOW_PYTHON" ] && "$ORDERFLOW_PYTHON" - "${PYTHON_TOOLS[@]}" <<'PY' 2>/dev/null; then return; fi
import sys
from importlib.metadata import version
sys.exit(any(version(n.split("[")[0]) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
    log "installing the deployment tests' Python packages into $venv"
    [ -x "$ORDERFLOW_PYTHON" ] || python3 -m venv "$venv" || die "cannot create a virtualenv (Debian: apt-get install python3-venv)"
    "$ORDERFLOW_PYTHON" -m pip install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}"
}

# The browser tests: Debian's chromium, driven by playwright-core from npm (pinned by
# tests/browser/package-lock.json; playwright-core downloads no browser) installed once into a
# cache keyed by the lock file. Exports ORDERFLOW_NODE_MODULES and ORDERFLOW_CHROMIUM.
ensure_browser_tools() {
    ensure_debian_packages chromium
    command -v npm >/dev/null || ensure_debian_packages nodejs npm
    local lock="$ROOT/tests/browser/package-lock.json"
    local dir
    dir="$HOME/.cache/orderflow/browser-$(sha256sum "$lock" | cut -c1-12)"
    if [ ! -f "$dir/.complete" ]; then
        log "installing playwright-core from npm into $dir"
        rm -rf "$dir" && mkdir -p "$dir"
        cp "$ROOT/tests/browser/package.json" "$lock" "$dir/"
        (cd "$dir" && npm ci --silent --no-audit --no-fund) || die "npm ci of the browser tests' packages failed"
        touch "$dir/.complete"
    fi
    export ORDERFLOW_NODE_MODULES="$dir/node_modules"
    ORDERFLOW_CHROMIUM="$(command -v chromium)" || die "chromium is not on PATH after installing it"
    export ORDERFLOW_CHROMIUM
}
