#!/usr/bin/env bash
# Validate paicha's monitoring configuration:
#   - Prometheus config, alerting/recording rules and their unit tests (promtool)
#   - Alertmanager config and its routing (amtool)
#   - Grafana dashboards (deploy/grafana/dashboards/*.json) type-checked
#     against Grafana's published schema (npm @grafana/schema, TypeScript),
#     and their PromQL parsed by promtool
#   - the deployment files: deploy/Dockerfile, deploy/docker-compose.yml and
#     deploy/k8s/ (deploy/check_deploy.py, plus `docker compose config`,
#     `docker build --check` and `kubectl kustomize` where those work)
# Installs promtool/amtool from Debian (packages `prometheus`,
# `prometheus-alertmanager`) when they are missing, Node.js and npm
# (Debian `nodejs`, `npm`) when missing, and the schema checker's npm
# packages (deploy/grafana/schema-check/package-lock.json) when they are not
# installed yet, and PyYAML (Debian `python3-yaml`, and `python3-tomli`
# before Python 3.11) when no python3 has it. Works from any directory.
# Exits non-zero if any check fails; every check runs either way.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repository root

PROM_CONFIG=deploy/prometheus/prometheus.yml
PROM_RULES=deploy/prometheus/rules.yml
PROM_TESTS=deploy/prometheus/rules_test.yml
AM_CONFIG=deploy/alertmanager/alertmanager.yml
GRAFANA_CHECK=deploy/grafana/schema-check
DOCKERFILE=deploy/Dockerfile
COMPOSE=deploy/docker-compose.yml
K8S=deploy/k8s

# --- tools -------------------------------------------------------------------

# apt_install PACKAGE...: installs Debian packages (as root or with sudo).
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "check.sh: need the Debian packages $* and not root without sudo" >&2
            exit 1
        fi
    fi
    echo "==> installing $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@"
}

install_tools() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "check.sh: promtool/amtool missing and not root without sudo;" \
                 "install the Debian packages prometheus and prometheus-alertmanager" >&2
            exit 1
        fi
    fi
    echo "==> installing prometheus (promtool) and prometheus-alertmanager (amtool)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager
    # The packages start their daemons where the init system allows it; this
    # script only wants the CLI tools, so leave ports 9090/9093 free.
    "${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
    "${sudo[@]}" service prometheus-alertmanager stop >/dev/null 2>&1 || true
}

if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
    install_tools
fi
echo "==> $(promtool --version 2>&1 | head -n1)"
echo "==> $(amtool --version 2>&1 | head -n1)"

# The dashboard schema check: Node.js, npm, and the exact packages of
# package-lock.json (installed again only when the lock file changes).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
echo "==> node $(node --version), npm $(npm --version 2>/dev/null)"
if ! cmp -s "$GRAFANA_CHECK/package-lock.json" "$GRAFANA_CHECK/node_modules/.paicha-installed-lock"; then
    echo "==> npm ci in $GRAFANA_CHECK"
    (cd "$GRAFANA_CHECK" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$GRAFANA_CHECK/package-lock.json" "$GRAFANA_CHECK/node_modules/.paicha-installed-lock"
fi

# The deployment checks read YAML (PyYAML) and TOML (tomllib, or tomli
# before Python 3.11). Debian's python3-yaml goes to /usr/bin/python3, which
# may not be the python3 on PATH (pyenv, a virtualenv).
py_ok() {
    "$1" -c 'import yaml
try:
    import tomllib
except ImportError:
    import tomli' >/dev/null 2>&1
}
PY=""
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && py_ok "$p"; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
    pkgs=(python3 python3-yaml)
    /usr/bin/python3 -c 'import tomllib' >/dev/null 2>&1 || pkgs+=(python3-tomli)
    apt_install "${pkgs[@]}"
    PY=/usr/bin/python3
    if ! py_ok "$PY"; then
        echo "check.sh: $PY cannot import yaml and tomllib/tomli" >&2
        exit 1
    fi
fi
echo "==> $("$PY" --version 2>&1) ($(command -v "$PY")) with PyYAML"

# --- checks ------------------------------------------------------------------

passed=0
failed=0
failures=()

# check NAME CMD...: run CMD, show its output, count the result.
check() {
    local name=$1 out rc
    shift
    echo "==> $name"
    set +e
    out=$("$@" 2>&1)
    rc=$?
    set -e
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "    ok"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "    FAILED (exit $rc)"
    fi
}

# route_is EXPECTED LABEL=VALUE...: the receiver amtool picks for these labels.
route_is() {
    local expected=$1 got
    shift
    # amtool prints the receiver on stdout and a flag warning on stderr.
    got=$(amtool config routes test --config.file="$AM_CONFIG" "$@" 2>/dev/null) || true
    if [ "$got" = "$expected" ]; then
        echo "$* -> $got"
    else
        echo "$* -> '$got', expected '$expected'"
        return 1
    fi
}

# Every alert defined in rules.yml must be exercised by rules_test.yml.
alerts_tested() {
    local alerts missing=0 a
    alerts=$(sed -n 's/^[[:space:]]*-[[:space:]]*alert:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$PROM_RULES")
    [ -n "$alerts" ] || { echo "no alerts found in $PROM_RULES"; return 1; }
    for a in $alerts; do
        if grep -Eq "^[[:space:]]*alertname:[[:space:]]*$a[[:space:]]*$" "$PROM_TESTS"; then
            echo "$a: tested"
        else
            echo "$a: NO TEST in $PROM_TESTS"
            missing=1
        fi
    done
    return "$missing"
}

# Every dashboard, panel options, field config, override and query against
# @grafana/schema with `tsc --strict` (see $GRAFANA_CHECK/generate.mjs; a
# misspelt or unknown field, or a value of the wrong type, fails it).
grafana_schema() {
    (cd "$GRAFANA_CHECK" && node generate.mjs && ./node_modules/.bin/tsc -p tsconfig.json)
}

# Every PromQL query of the dashboards parses (as a recording rule).
grafana_promql() {
    local rules rc
    rules=$(mktemp --suffix=.yml)
    node "$GRAFANA_CHECK/promql-rules.mjs" >"$rules" && promtool check rules "$rules"
    rc=$?
    rm -f "$rules"
    return "$rc"
}

# promtool check config resolves rule_files relative to the config file.
check "promtool check config"  promtool check config "$PROM_CONFIG"
check "promtool check rules"   promtool check rules "$PROM_RULES"
check "promtool test rules"    promtool test rules "$PROM_TESTS"
check "every alert has a unit test" alerts_tested
check "amtool check-config"    amtool check-config "$AM_CONFIG"
check "route: critical pipeline alert" \
    route_is paicha-critical severity=critical alertname=PaichaDown instance=paicha:8080
check "route: critical district alert" \
    route_is paicha-critical severity=critical alertname=FollowUpsOverdueCritical district=500103
check "route: warning district alert" \
    route_is paicha-warning severity=warning alertname=FollowUpsOverdue district=500103
check "route: alert without severity falls back to warning" \
    route_is paicha-warning alertname=Unlabelled
check "grafana dashboards match @grafana/schema (tsc)" grafana_schema
check "grafana dashboards' PromQL parses (promtool)" grafana_promql

# --- deployment files ----------------------------------------------------------

# The Docker daemon, the compose plugin and a Kubernetes API server are
# usually absent where this runs, so deploy/check_deploy.py checks the files
# statically (see its checks there), and the real tools add theirs when they
# can work here.

# `docker build --check` runs BuildKit's Dockerfile linter; it needs a daemon.
docker_build_check() {
    docker build --check -f "$DOCKERFILE" .
}

# The compose plugin's own parser, and that it sees every service.
compose_config() {
    local services s missing=0
    docker compose -f "$COMPOSE" config -q || return 1
    services=" $(docker compose -f "$COMPOSE" config --services | tr '\n' ' ') "
    for s in kafka kafka-init processor-1 processor-2 simulator prometheus alertmanager grafana; do
        case "$services" in
            *" $s "*) ;;
            *) echo "docker compose config: no service $s"; missing=1 ;;
        esac
    done
    return "$missing"
}

# kustomize (built into kubectl) resolves kustomization.yaml offline.
# `kubectl apply --dry-run=client` is not run: even a client dry run asks an
# API server for the resource types, and with no kubeconfig kubectl tries
# localhost:8080, which is paicha's own HTTP port.
k8s_kustomize() {
    kubectl kustomize "$K8S" >/dev/null
}

python_parses() {
    "$PY" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$1"
}

check "Dockerfile: stages, non-root user, no remote ADD, .dockerignore" \
    "$PY" deploy/check_deploy.py dockerfile "$DOCKERFILE"
if docker info >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
    check "docker build --check" docker_build_check
else
    echo "==> docker build --check: skipped (no Docker daemon with buildx here)"
fi
check "docker-compose.yml: services, dependencies, mounts, processors, scrape targets" \
    "$PY" deploy/check_deploy.py compose "$COMPOSE"
if docker compose version >/dev/null 2>&1; then
    check "docker compose config" compose_config
else
    echo "==> docker compose config: skipped (no compose plugin here)"
fi
check "alertmanager webhook receiver parses" python_parses deploy/alertmanager/webhook.py
check "Kubernetes manifests: objects, probes, security, shared RWX volume, paicha.toml" \
    "$PY" deploy/check_deploy.py k8s "$K8S"
if command -v kubectl >/dev/null 2>&1; then
    check "kubectl kustomize $K8S" k8s_kustomize
else
    echo "==> kubectl kustomize: skipped (no kubectl here)"
fi

echo
if [ "$failed" -ne 0 ]; then
    echo "deploy/check.sh: $failed of $((passed + failed)) checks FAILED:"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "deploy/check.sh: all $passed checks passed"
