#!/usr/bin/env python3
"""Static checks of paicha's deployment files, run by deploy/check.sh.

    check_deploy.py dockerfile deploy/Dockerfile
    check_deploy.py compose    deploy/docker-compose.yml
    check_deploy.py k8s        deploy/k8s

Each prints what it verified and exits 1 after listing every problem it
found. Needs PyYAML, and tomllib (Python 3.11+) or tomli. Works without
Docker or a Kubernetes API server, so it catches what a real
`docker compose config` or `kubectl apply` would not: references between
services and files, the settings paicha itself refuses to start without,
and names (flags, PAICHA_* variables, topics) checked against the source.
"""

import re
import shlex
import sys
from pathlib import Path, PurePosixPath

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11 (Debian/Ubuntu package python3-tomli)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent  # the repository
SOURCE_DIRS = ["src", "contract/src", "simulator/src", "ingest/src", "processors/src", "query/src"]

problems = []


def problem(msg):
    problems.append(msg)


def ok(msg):
    print(f"ok: {msg}")


def finish(what):
    if problems:
        for p in problems:
            print(f"ERROR: {p}")
        print(f"{what}: {len(problems)} problem(s)")
        return 1
    return 0


# --- what the source says ------------------------------------------------------


def rust_sources():
    for d in SOURCE_DIRS:
        yield from sorted((ROOT / d).rglob("*.rs"))


def known_env_vars():
    """Every PAICHA_* name the binary reads (string literals in the source)."""
    names = set()
    for f in rust_sources():
        names.update(re.findall(r'"(PAICHA_[A-Z0-9_]+)"', f.read_text(encoding="utf-8")))
    return names


def known_flags():
    """Every long flag of src/cli.rs, across all subcommands (a typo check,
    not a per-subcommand one)."""
    text = (ROOT / "src/cli.rs").read_text(encoding="utf-8")
    flags = {"--help", "--version"}
    for attr, field in re.findall(r"#\[arg\((.*?)\)\]\s*pub\s+(\w+)\s*:", text, re.S):
        if not re.search(r"\blong\b", attr):
            continue
        m = re.search(r'\blong\s*=\s*"([^"]+)"', attr)
        flags.add("--" + (m.group(1) if m else field.replace("_", "-")))
    return flags


def known_topics():
    text = (ROOT / "contract/src/event.rs").read_text(encoding="utf-8")
    return sorted(set(re.findall(r'"(screening\.[a-z_]+)"', text)))


def config_key_env(key):
    """The variable a --config file key becomes (src/cli.rs apply_config_file)."""
    return "PAICHA_" + key.upper().replace("-", "_")


def flag_values(args, flag):
    """Values of `--flag V` / `--flag=V` in an argument list."""
    out = []
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith(flag + "="):
            out.append(a[len(flag) + 1:])
    return out


def check_flags(where, args, flags):
    for a in args:
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            if name not in flags:
                problem(f"{where}: `{name}` is not a flag of paicha (src/cli.rs)")


def is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_credentials(where, env):
    """paicha refuses a non-loopback listener without these; see README."""
    if not env.get("PAICHA_HTTP_TOKENS"):
        problem(f"{where}: HTTP on a non-loopback address needs PAICHA_HTTP_TOKENS")
    for name, shape in (("PAICHA_INGEST_TOKENS", "SOURCE:TOKEN"), ("PAICHA_PG_USERS", "NAME:PASSWORD")):
        items = [i for i in (env.get(name) or "").split(",") if i]
        if not items:
            problem(f"{where}: a non-loopback listener needs {name}")
        for item in items:
            a, sep, b = item.partition(":")
            if not (sep and a and b):
                problem(f"{where}: {name} item `{item}` is not {shape}")


# --- Dockerfile ------------------------------------------------------------------


def dockerfile_instructions(text):
    """(line number, INSTRUCTION, arguments) with continuations joined."""
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue  # comment lines inside a continuation are dropped
        if not buf:
            start = n
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    if buf:
        problem(f"line {start}: continuation runs off the end of the file")
    return out


def check_dockerfile(path):
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    ins = dockerfile_instructions(text)
    stages = []  # [name, base, user]
    args = {}  # ARGs before the first FROM, which FROM may use
    for n, word, rest in ins:
        if word == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        if word == "FROM":
            rest = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest)
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append([name, parts[0] if parts else "", None])
        elif not stages and word != "ARG":
            problem(f"line {n}: {word} before the first FROM")
        elif word == "USER":
            stages[-1][2] = rest.split(":")[0]
        elif word in ("ADD",) and re.search(r"(^|\s)(https?|git)[:@]", rest):
            problem(f"line {n}: ADD of a remote URL (unpinned, unverified); download and check it in a RUN")
        elif word == "COPY":
            m = re.search(r"--from=(\S+)", rest)
            if m:
                names = [s[0] for s in stages[:-1]]
                ref = m.group(1)
                if not (ref in names or (ref.isdigit() and int(ref) < len(stages) - 1) or ":" in ref or "/" in ref):
                    problem(f"line {n}: COPY --from={ref} names no earlier stage")
    if len(stages) < 2:
        problem(f"{len(stages)} FROM stage(s): the image must be multi-stage (build, then a slim runtime)")
    else:
        ok(f"{len(stages)} stages: " + ", ".join(f"{s[0] or '?'} ({s[1]})" for s in stages))
        final = stages[-1]
        if final[1] == stages[0][1]:
            problem("the runtime stage has the builder's base image")
        if final[2] is None:
            problem("the final stage has no USER: the container would run as root")
        elif final[2] in ("root", "0"):
            problem(f"the final stage runs as USER {final[2]}")
        else:
            ok(f"runtime user {final[2]}")
    cmds = {w: r for _, w, r in ins}  # last of each
    if not cmds.get("ENTRYPOINT", "").startswith("["):
        problem("ENTRYPOINT must be in exec form ([\"paicha\"]) so SIGTERM reaches paicha")
    exposed = set()
    for _, w, r in ins:
        if w == "EXPOSE":
            exposed.update(p.split("/")[0] for p in r.split())
    for port in ("8080", "5432"):
        if port not in exposed:
            problem(f"EXPOSE lacks {port}")
    builds = [r for _, w, r in ins if w == "RUN" and "cargo build" in r]
    if not builds:
        problem("no RUN cargo build")
    for r in builds:
        for want in ("--release", "--locked"):
            if want not in r:
                problem(f"cargo build without {want}")
    ignore = path.parent / (path.name + ".dockerignore")
    if not ignore.exists():
        problem(f"{ignore.name} missing: target/ (tens of GB) would go to the daemon")
    else:
        lines = {l.strip().rstrip("/") for l in ignore.read_text().splitlines()}
        for want in ("target", ".git", "data"):
            if want not in lines and "/" + want not in lines:
                problem(f"{ignore.name} does not exclude {want}")
        ok(f"{ignore.name} excludes target, .git, data")
    return finish(str(path))


# --- docker compose --------------------------------------------------------------

COMPOSE_TOP = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
# The Compose Specification's service attributes (a misspelt one, e.g.
# `depend_on`, would otherwise be ignored by a lenient reader).
COMPOSE_SERVICE = set("""
annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs
container_name cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares
cpus cpuset credential_spec depends_on deploy develop device_cgroup_rules devices dns dns_opt
dns_search domainname driver_opts entrypoint env_file environment expose extends external_links
extra_hosts gpus group_add healthcheck hostname image init ipc isolation labels label_file links
logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit models network_mode
networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop
privileged profiles provider pull_policy read_only restart runtime scale secrets security_opt
shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits use_api_socket
user userns_mode uts volumes volumes_from working_dir
""".split())
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
EXPECTED_SERVICES = ["kafka", "kafka-init", "processor-1", "processor-2", "simulator",
                     "prometheus", "alertmanager", "grafana"]

INTERP = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)((:?[-?+])([^}]*))?\}|[A-Za-z_][A-Za-z0-9_]*|.|$)")


def interpolate(where, s):
    """Compose's variable substitution with every variable unset: `${X:-d}`
    becomes d. A `$` compose would substitute without a default (`$x`,
    `${x}`) is reported: in a shell command it means `$$`."""
    def sub(m):
        whole, name, op, default = m.group(1), m.group(2), m.group(4), m.group(5)
        if whole == "$":
            return "$"
        if name and op in ("-", ":-"):
            return default
        if name and op in ("?", ":?"):
            problem(f"{where}: `${{{name}{op}…}}` makes `docker compose up` fail unless {name} is set")
            return ""
        problem(f"{where}: `{m.group(0)}` is substituted by compose (empty when unset); "
                f"write `$$` for a shell `$`, or give a default `${{NAME:-value}}`")
        return ""
    return INTERP.sub(sub, s)


def walk_strings(where, value):
    if isinstance(value, str):
        interpolate(where, value)
    elif isinstance(value, dict):
        for k, v in value.items():
            walk_strings(f"{where}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            walk_strings(f"{where}[{i}]", v)


def as_list(cmd):
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(c) for c in cmd]


def env_of(where, svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    out = {}
    for k, v in env.items():
        if isinstance(v, bool):
            problem(f"{where}: environment {k}: a YAML boolean; quote it (\"{str(v).lower()}\")")
            v = str(v).lower()
        out[k] = None if v is None else interpolate(f"{where}.environment.{k}", str(v))
    return out


def mounts_of(svc):
    """[(source, target, kind)] with kind 'bind' or 'volume'."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) == 1:
                out.append((None, parts[0], "volume"))  # anonymous
                continue
            src, tgt = parts[0], parts[1]
            kind = "bind" if src.startswith((".", "/", "~")) else "volume"
        else:
            src, tgt = v.get("source"), v.get("target")
            kind = v.get("type", "volume")
        out.append((src, tgt, kind))
    return out


def host_path(base, svc, container_path):
    """The host file behind a container path of a bind mount, if any."""
    cp = PurePosixPath(container_path)
    for src, tgt, kind in mounts_of(svc):
        if kind != "bind" or not tgt:
            continue
        t = PurePosixPath(tgt)
        if cp == t or t in cp.parents:
            return (base / src / cp.relative_to(t)).resolve()
    return None



def mounted_config(base, name, svc, default):
    """The repository file a service reads as its --config.file (default
    `default`), or None after reporting that it is not bind-mounted."""
    cfg = next((a.split("=", 1)[1] for a in as_list(svc.get("command")) if a.startswith("--config.file=")),
               default)
    f = host_path(base, svc, cfg)
    if not f or not f.is_file():
        problem(f"services.{name}: {cfg} is not bind-mounted from the repository")
        return None
    return f

def check_compose(path):
    path = Path(path)
    base = path.resolve().parent
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        problem(f"not YAML: {e}")
        return finish(str(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        problem("no `services` mapping")
        return finish(str(path))
    for k in doc:
        if k not in COMPOSE_TOP and not str(k).startswith("x-"):
            problem(f"unknown top-level key `{k}`")
    services = doc["services"]
    volumes = doc.get("volumes") or {}
    missing = [s for s in EXPECTED_SERVICES if s not in services]
    for s in missing:
        problem(f"service `{s}` missing")
    if not missing:
        ok("services: " + ", ".join(services))

    hosts = {}  # DNS name -> service
    for name, svc in services.items():
        hosts[name] = name
        if isinstance(svc.get("hostname"), str):
            hosts[svc["hostname"]] = name
        nets = svc.get("networks")
        if isinstance(nets, dict):
            for n in nets.values():
                for a in (n or {}).get("aliases", []) or []:
                    hosts[a] = name

    flags, env_names = known_flags(), known_env_vars()
    paicha, published, envs = [], {}, {}
    for name, svc in services.items():
        where = f"services.{name}"
        if not isinstance(svc, dict):
            problem(f"{where}: not a mapping")
            continue
        for k in svc:
            if k not in COMPOSE_SERVICE and not str(k).startswith("x-"):
                problem(f"{where}: unknown attribute `{k}`")
        walk_strings(where, {k: v for k, v in svc.items() if k != "environment"})
        envs[name] = env_of(where, svc)
        if "image" not in svc and "build" not in svc:
            problem(f"{where}: neither image nor build")
        build = svc.get("build")
        if build is not None:
            ctx = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not ctx.is_dir():
                problem(f"{where}: build context {ctx} is not a directory")
            elif not (ctx / dockerfile).is_file():
                problem(f"{where}: build dockerfile {ctx / dockerfile} does not exist")
            elif (ctx / dockerfile).resolve() == (ROOT / "deploy/Dockerfile").resolve():
                paicha.append(name)
        deps = svc.get("depends_on") or []
        for dep, spec in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            if dep not in services:
                problem(f"{where}: depends_on `{dep}`, which is no service")
                continue
            cond = (spec or {}).get("condition", "service_started")
            if cond not in DEPENDS_CONDITIONS:
                problem(f"{where}: depends_on {dep}: unknown condition `{cond}`")
            if cond == "service_healthy" and not services[dep].get("healthcheck"):
                problem(f"{where}: waits for {dep} to be healthy, but {dep} has no healthcheck")
        hc = svc.get("healthcheck")
        if hc:
            for k in hc:
                if k not in HEALTHCHECK_KEYS:
                    problem(f"{where}.healthcheck: unknown key `{k}`")
            test = hc.get("test")
            if not (isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE")) and not isinstance(test, str):
                problem(f"{where}.healthcheck.test: must be [\"CMD\", …], [\"CMD-SHELL\", \"…\"] or a string")
        for src, tgt, kind in mounts_of(svc):
            if kind == "bind":
                if src.startswith("."):
                    if not (base / src).exists():
                        problem(f"{where}: bind mount source {src} does not exist (relative to {base})")
            elif kind == "volume" and src and src not in volumes:
                problem(f"{where}: volume `{src}` is not declared under top-level volumes")
        for p in svc.get("ports") or []:
            spec = str(p).split("/")[0]
            parts = spec.split(":")
            if len(parts) >= 2:
                host = ":".join(parts[:-1])
                if host in published:
                    problem(f"{where}: host port {host} is also published by {published[host]}")
                published[host] = name

    # Services running the paicha image (built here, or the same image name).
    images = {services[s].get("image") for s in paicha if services[s].get("image")}
    paicha += [n for n, s in services.items() if n not in paicha and s.get("image") in images]
    processors = []
    hmac = {}
    for name in paicha:
        svc, where = services[name], f"services.{name}"
        args = as_list(svc.get("command"))
        env = envs[name]
        check_flags(where + ".command", args, flags)
        for k in env:
            if k.startswith("PAICHA_") and k not in env_names:
                problem(f"{where}: paicha reads no variable {k}")
        hmac[name] = env.get("PAICHA_HMAC_KEY")
        uses_brokers = bool(flag_values(args, "--brokers") or env.get("PAICHA_BROKERS"))
        if uses_brokers and not (env.get("PAICHA_HMAC_KEY") or env.get("PAICHA_HMAC_KEY_FILE")
                                 or flag_values(args, "--hmac-key-file")):
            problem(f"{where}: --brokers needs PAICHA_HMAC_KEY (paicha refuses to start without it)")
        if args[:1] != ["run"]:
            continue
        listens = {}
        for flag, var in (("--http", "PAICHA_HTTP"), ("--pg", "PAICHA_PG")):
            v = (flag_values(args, flag) or [env.get(var)])[-1]
            listens[flag] = v
            if v and not is_loopback(v):
                check_credentials(where, env)
        data = (flag_values(args, "--data") or [env.get("PAICHA_DATA") or "data"])[-1]
        data = str(PurePosixPath("/data") / data)  # WORKDIR /data
        vol = [src for src, tgt, kind in mounts_of(svc) if tgt == data and kind == "volume"]
        group = (flag_values(args, "--group") or [env.get("PAICHA_GROUP") or "paicha"])[-1]
        hc = svc.get("healthcheck") or {}
        if "/readyz" not in " ".join(as_list(hc.get("test"))):
            problem(f"{where}: healthcheck does not ask /readyz")
        port = (listens["--http"] or "127.0.0.1:8080").rsplit(":", 1)[1]
        processors.append((name, vol[0] if vol else None, group, port))
        if not vol:
            problem(f"{where}: no named volume at its data directory {data}")
    if len(processors) < 2:
        problem(f"{len(processors)} `paicha run` service(s); the stack runs two")
    else:
        if len({p[1] for p in processors}) != 1:
            problem("the processors do not share one data volume: " +
                    ", ".join(f"{p[0]}={p[1]}" for p in processors))
        else:
            ok(f"processors {', '.join(p[0] for p in processors)} share volume {processors[0][1]}")
        if len({p[2] for p in processors}) != 1:
            problem("the processors are in different consumer groups: " +
                    ", ".join(f"{p[0]}={p[2]}" for p in processors))
        else:
            ok(f"processors share consumer group {processors[0][2]}")
    if len(set(hmac.values())) > 1:
        problem("paicha services with different PAICHA_HMAC_KEY (pseudonyms would not match): " +
                ", ".join(f"{k}={v}" for k, v in hmac.items()))
    elif hmac:
        ok(f"one PAICHA_HMAC_KEY for {', '.join(hmac)}")

    # kafka-init creates every topic paicha uses.
    init = services.get("kafka-init")
    if init:
        script = " ".join(as_list(init.get("entrypoint")) + as_list(init.get("command")))
        words = set(re.findall(r"[a-z_.]+", script))
        for topic in known_topics():
            short = topic.split(".", 1)[1]
            if topic not in words and short not in words:
                problem(f"services.kafka-init: does not create {topic} (contract/src/event.rs)")
        if "--if-not-exists" not in script:
            problem("services.kafka-init: --create without --if-not-exists fails on the second `up`")
        ok(f"kafka-init creates {', '.join(known_topics())}")

    # Prometheus scrapes every processor as job "paicha".
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("prom/prometheus"):
            continue
        f = mounted_config(base, name, svc, "/etc/prometheus/prometheus.yml")
        if f is None:
            continue
        prom = yaml.safe_load(f.read_text(encoding="utf-8"))
        jobs = {j.get("job_name"): j for j in prom.get("scrape_configs", [])}
        if "paicha" not in jobs:
            problem(f"{f}: no job_name paicha (the alert rules key on job=\"paicha\")")
            continue
        targets = {t for sc in jobs["paicha"].get("static_configs", []) for t in sc.get("targets", [])}
        want = {f"{p[0]}:{p[3]}" for p in processors}
        for t in sorted(want - targets):
            problem(f"{f}: job paicha does not scrape {t}")
        for t in sorted(targets - want):
            problem(f"{f}: job paicha scrapes {t}, which is no paicha processor of {path.name}")
        if want <= targets:
            ok(f"prometheus job paicha scrapes {', '.join(sorted(targets))}")
        for am in prom.get("alerting", {}).get("alertmanagers", []):
            for sc in am.get("static_configs", []):
                for t in sc.get("targets", []):
                    if t.rsplit(":", 1)[0] not in hosts:
                        problem(f"{f}: alertmanager target {t} is no service")

    # Alertmanager's webhooks and Grafana's data sources point at services.
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if image.startswith("prom/alertmanager"):
            f = mounted_config(base, name, svc, "/etc/alertmanager/alertmanager.yml")
            if f is None:
                continue
            am = yaml.safe_load(f.read_text(encoding="utf-8"))
            for r in am.get("receivers", []):
                for w in r.get("webhook_configs", []) or []:
                    host = re.sub(r"^\w+://", "", w.get("url", "")).split("/")[0].rsplit(":", 1)[0]
                    if host not in hosts:
                        problem(f"{f}: receiver {r.get('name')} posts to {host}, which is no service")
        if image.startswith("grafana/"):
            prov = host_path(base, svc, "/etc/grafana/provisioning")
            if not prov or not prov.is_dir():
                problem(f"services.{name}: nothing mounted at /etc/grafana/provisioning")
                continue
            genv = envs[name]
            targets = {tgt for _, tgt, _ in mounts_of(svc)}
            for f in sorted((prov / "dashboards").glob("*.y*ml")):
                for p in (yaml.safe_load(f.read_text()) or {}).get("providers", []):
                    dpath = (p.get("options") or {}).get("path")
                    if dpath and dpath not in targets:
                        problem(f"services.{name}: {f.name} loads dashboards from {dpath}, which is not mounted")
                    elif dpath and not any(host_path(base, svc, dpath).glob("*.json")):
                        problem(f"services.{name}: no dashboards in what is mounted at {dpath}")
            for f in sorted((prov / "datasources").glob("*.y*ml")):
                for ds in (yaml.safe_load(f.read_text()) or {}).get("datasources", []):
                    url = ds.get("url", "")
                    host = re.sub(r"^\w+://", "", url).split("/")[0].rsplit(":", 1)[0]
                    if host not in hosts:
                        problem(f"{f.name}: data source {ds.get('name')} at {url}: no service or alias {host}")
                        continue
                    for v in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)",
                                        yaml.safe_dump(ds.get("secureJsonData") or {})):
                        if not genv.get(v):
                            problem(f"services.{name}: {f.name} needs {v} in Grafana's environment")
                    user = ds.get("user")
                    if user and "postgres" in ds.get("type", ""):
                        tenv = envs[hosts[host]]
                        users = {u.split(":", 1)[0]: u.split(":", 1)[-1] for u in (tenv.get("PAICHA_PG_USERS") or "").split(",")}
                        if user not in users:
                            problem(f"{f.name}: data source user {user} is not in {hosts[host]}'s PAICHA_PG_USERS")
                        else:
                            pw = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", yaml.safe_dump(ds.get("secureJsonData") or {}))
                            if pw and genv.get(pw[0]) != users[user]:
                                problem(f"services.{name}: {pw[0]} differs from {user}'s password in "
                                        f"{hosts[host]}'s PAICHA_PG_USERS")
                    ok(f"grafana data source {ds.get('name')} -> {url} (service {hosts[host]})")
    return finish(str(path))


# --- Kubernetes ------------------------------------------------------------------

NAMESPACED = {"ConfigMap", "Secret", "Service", "StatefulSet", "Deployment", "PersistentVolumeClaim",
              "PodDisruptionBudget", "ServiceMonitor"}
CONTAINER_KEYS = set("""
args command env envFrom image imagePullPolicy lifecycle livenessProbe name ports readinessProbe
resizePolicy resources restartPolicy securityContext startupProbe stdin stdinOnce
terminationMessagePath terminationMessagePolicy tty volumeDevices volumeMounts workingDir
""".split())
PROBE_KEYS = {"exec", "httpGet", "tcpSocket", "grpc", "initialDelaySeconds", "periodSeconds",
              "timeoutSeconds", "successThreshold", "failureThreshold", "terminationGracePeriodSeconds"}
POD_KEYS = set("""
activeDeadlineSeconds affinity automountServiceAccountToken containers dnsConfig dnsPolicy
enableServiceLinks ephemeralContainers hostAliases hostIPC hostNetwork hostPID hostUsers hostname
imagePullSecrets initContainers nodeName nodeSelector os overhead preemptionPolicy priority
priorityClassName readinessGates resourceClaims resources restartPolicy runtimeClassName schedulerName
schedulingGates securityContext serviceAccount serviceAccountName setHostnameAsFQDN shareProcessNamespace
subdomain terminationGracePeriodSeconds tolerations topologySpreadConstraints volumes
""".split())
SECRET_KEYS = ["PAICHA_HMAC_KEY", "PAICHA_HTTP_TOKENS", "PAICHA_INGEST_TOKENS", "PAICHA_PG_USERS"]


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_container(where, c, pod, objs, env_names, flags):
    for k in c:
        if k not in CONTAINER_KEYS:
            problem(f"{where}: unknown container field `{k}`")
    args = as_list(c.get("command")) + as_list(c.get("args"))
    check_flags(where + ".args", args, flags)
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", []) or []}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        for k in (c.get(probe) or {}):
            if k not in PROBE_KEYS:
                problem(f"{where}.{probe}: unknown field `{k}`")
        port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
        if isinstance(port, str) and port not in ports:
            problem(f"{where}.{probe}: port `{port}` is no named port of the container")
    for e in c.get("env", []) or []:
        if e.get("name", "").startswith("PAICHA_") and e["name"] not in env_names:
            problem(f"{where}: paicha reads no variable {e['name']}")
        ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {})
        if ref and ref.get("key") not in objs.get(("Secret", ref.get("name")), {}).get("_keys", set()):
            problem(f"{where}: env {e.get('name')} from Secret {ref.get('name')} key {ref.get('key')}, which no Secret here has")
    vols = {v.get("name"): v for v in pod.get("volumes", []) or []}
    for m in c.get("volumeMounts", []) or []:
        if m.get("name") not in vols:
            problem(f"{where}: volumeMount {m.get('name')} names no volume of the pod")
    sc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
    if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
        problem(f"{where}: runAsNonRoot is not true")
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    if uid in (None, 0):
        problem(f"{where}: runAsUser {uid} (the image's user is 10001)")
    if sc.get("allowPrivilegeEscalation") is not False:
        problem(f"{where}: allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problem(f"{where}: readOnlyRootFilesystem is not true")
    return args, ports, vols


def check_k8s(directory):
    directory = Path(directory)
    files = sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml")))
    objs, kinds, kust = {}, {}, None
    for f in files:
        try:
            docs = [d for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d is not None]
        except yaml.YAMLError as e:
            problem(f"{f.name}: not YAML: {e}")
            continue
        for i, d in enumerate(docs):
            where = f"{f.name}[{i}]"
            if not isinstance(d, dict):
                problem(f"{where}: not a mapping")
                continue
            if d.get("kind") == "Kustomization":
                kust = (f, d)
                continue
            meta = d.get("metadata") or {}
            for k, v in (("apiVersion", d.get("apiVersion")), ("kind", d.get("kind")), ("metadata.name", meta.get("name"))):
                if not v:
                    problem(f"{where}: no {k}")
            kind, name = d.get("kind"), meta.get("name")
            if kind in NAMESPACED and meta.get("namespace") != "paicha":
                problem(f"{where}: {kind} {name} is not in namespace paicha")
            if (kind, name) in objs:
                problem(f"{where}: {kind} {name} defined twice")
            d["_file"] = f.name
            if kind == "Secret":
                d["_keys"] = set((d.get("stringData") or {}).keys()) | set((d.get("data") or {}).keys())
            objs[(kind, name)] = d
            kinds.setdefault(kind, []).append(name)
    for k in ("Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service", "StatefulSet", "PodDisruptionBudget"):
        if k not in kinds:
            problem(f"no {k} among {directory}/*.yaml")
    ok("objects: " + ", ".join(f"{k}/{n}" for k, ns in kinds.items() for n in ns))

    if kust is None:
        problem("no kustomization.yaml")
    else:
        for r in kust[1].get("resources", []):
            if not (directory / r).exists():
                problem(f"{kust[0].name}: resource {r} does not exist")
        listed = set(kust[1].get("resources", []))
        ok(f"{kust[0].name} lists {', '.join(sorted(listed))}")
        images = {i.get("name") for i in kust[1].get("images", []) or []}
        for (kind, name), d in objs.items():
            if kind == "StatefulSet" and d["_file"] in listed:
                for c in d["spec"]["template"]["spec"].get("containers", []):
                    if images and re.split(r"[:@]", c.get("image", ""))[0] not in images:
                        problem(f"{d['_file']}: image {c.get('image')} is not one of "
                                f"{kust[0].name}'s images ({', '.join(sorted(images))}), so it is never replaced")

    env_names, flags = known_env_vars(), known_flags()
    for (kind, name), d in objs.items():
        if kind == "Secret":
            for k in d["_keys"]:
                if k.startswith("PAICHA_") and k not in env_names:
                    problem(f"{d['_file']}: Secret key {k} is no variable paicha reads")
            for k in SECRET_KEYS:
                if k not in d["_keys"]:
                    problem(f"{d['_file']}: Secret {name} lacks {k}")
            check_credentials(f"{d['_file']}: Secret {name}",
                              {k: str(v) for k, v in (d.get("stringData") or {}).items()})

    sts = [d for (k, _), d in objs.items() if k == "StatefulSet"]
    for s in sts:
        where = f"{s['_file']}: StatefulSet {s['metadata']['name']}"
        spec = s.get("spec") or {}
        tmpl = spec.get("template") or {}
        pod = tmpl.get("spec") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        if not labels_match((spec.get("selector") or {}).get("matchLabels"), labels):
            problem(f"{where}: selector does not match the pod template's labels")
        gov = objs.get(("Service", spec.get("serviceName")))
        if not gov:
            problem(f"{where}: serviceName {spec.get('serviceName')} is no Service here")
        elif (gov.get("spec") or {}).get("clusterIP") != "None":
            problem(f"{where}: serviceName {spec.get('serviceName')} is not headless (clusterIP: None)")
        if "volumeClaimTemplates" in spec:
            problem(f"{where}: volumeClaimTemplates give each replica its own volume; "
                    "the data volume must be one shared claim")
        for k in pod:
            if k not in POD_KEYS:
                problem(f"{where}: unknown pod field `{k}`")
        if (pod.get("terminationGracePeriodSeconds") or 30) < 60:
            problem(f"{where}: terminationGracePeriodSeconds < 60 leaves no time to flush and commit")
        cs = [c for c in pod.get("containers", []) if c.get("name") == "paicha"]
        if not cs:
            problem(f"{where}: no container named paicha")
            continue
        c = cs[0]
        args, ports, vols = check_container(f"{where} container paicha", c, pod, objs, env_names, flags)
        if args[:1] != ["run"]:
            problem(f"{where}: container args do not start with `run`")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                problem(f"{where}: {probe} httpGet path is {got}, not {path}")
        if not c.get("startupProbe"):
            problem(f"{where}: no startupProbe")
        req = ((c.get("resources") or {}).get("requests") or {})
        for r in ("cpu", "memory"):
            if r not in req:
                problem(f"{where}: no resources.requests.{r}")
        if "memory" not in ((c.get("resources") or {}).get("limits") or {}):
            problem(f"{where}: no resources.limits.memory")
        secrets = [e["secretRef"]["name"] for e in c.get("envFrom", []) or [] if "secretRef" in e]
        for sname in secrets:
            if ("Secret", sname) not in objs:
                problem(f"{where}: envFrom Secret {sname}, which no file here defines")
        env = {}
        for sname in secrets:
            env.update({k: "x" for k in objs.get(("Secret", sname), {}).get("_keys", set())})
        # The config file: its key names and that it is mounted where --config says.
        settings = {}
        for cfg in flag_values(args, "--config"):
            cp = PurePosixPath(cfg)
            m = [m for m in c.get("volumeMounts", []) if PurePosixPath(m.get("mountPath", "")) == cp.parent]
            cm_name = ((vols.get(m[0]["name"]) if m else {}) or {}).get("configMap", {}).get("name")
            cm = objs.get(("ConfigMap", cm_name))
            if not cm or cp.name not in (cm.get("data") or {}):
                problem(f"{where}: --config {cfg} is not a key of a ConfigMap mounted at {cp.parent}")
                continue
            try:
                settings = tomllib.loads(cm["data"][cp.name])
            except tomllib.TOMLDecodeError as e:
                problem(f"{cm['_file']}: {cp.name} is not TOML: {e}")
                continue
            for k in settings:
                if config_key_env(k) not in env_names:
                    problem(f"{cm['_file']}: {cp.name} key `{k}` sets {config_key_env(k)}, which paicha does not read")
            ok(f"{cm['_file']}: {cp.name} parses; keys {', '.join(settings)}")
        for flag, var in (("--http", "PAICHA_HTTP"), ("--pg", "PAICHA_PG")):
            v = (flag_values(args, flag) or [settings.get(var[7:].lower())])[-1]
            if v and not is_loopback(str(v)) and not all(k in env for k in SECRET_KEYS[1:]):
                problem(f"{where}: {flag} {v} without the Secret's {', '.join(SECRET_KEYS[1:])}")
        if "brokers" in settings and "PAICHA_HMAC_KEY" not in env:
            problem(f"{where}: brokers without PAICHA_HMAC_KEY")
        # The shared data volume.
        data = str(PurePosixPath("/data") / str(settings.get("data") or (flag_values(args, "--data") or ["data"])[-1]))
        m = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == data]
        claim = ((vols.get(m[0]["name"]) if m else {}) or {}).get("persistentVolumeClaim", {}).get("claimName")
        pvc = objs.get(("PersistentVolumeClaim", claim))
        if not pvc:
            problem(f"{where}: the data directory {data} is not a PersistentVolumeClaim defined here")
        elif "ReadWriteMany" not in (pvc.get("spec") or {}).get("accessModes", []):
            problem(f"{pvc['_file']}: {claim} is not ReadWriteMany; every replica mounts it")
        else:
            ok(f"{where}: {data} is the shared ReadWriteMany claim {claim}")
        # Services and the disruption budget select these pods.
        for (kind, name), d in objs.items():
            sel = None
            if kind == "Service":
                sel = (d.get("spec") or {}).get("selector")
                for p in (d.get("spec") or {}).get("ports", []):
                    tp = p.get("targetPort", p.get("port"))
                    if labels_match(sel, labels) and isinstance(tp, str) and tp not in ports:
                        problem(f"{d['_file']}: Service {name} targetPort {tp} is no named port of paicha")
            elif kind == "PodDisruptionBudget":
                sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
            else:
                continue
            if not labels_match(sel, labels):
                if name in ("paicha", "paicha-headless") or kind == "PodDisruptionBudget":
                    problem(f"{d['_file']}: {kind} {name} selects no paicha pod")
        exposed = {p.get("port") for (k, _), d in objs.items() if k == "Service"
                   for p in (d.get("spec") or {}).get("ports", [])}
        for port in (8080, 5432):
            if port not in exposed:
                problem(f"no Service exposes port {port}")
        ok(f"{where}: probes /readyz and /healthz, requests {req}, non-root, read-only root")
    for (kind, name), d in objs.items():
        if kind == "ServiceMonitor":
            sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
            svcs = [n for (k, n), s in objs.items() if k == "Service"
                    and labels_match(sel, (s.get("metadata") or {}).get("labels") or {})]
            if len(svcs) != 1:
                problem(f"{d['_file']}: ServiceMonitor {name} selects {len(svcs)} Services "
                        f"({', '.join(svcs)}); one, or every pod is scraped more than once")
            for e in (d.get("spec") or {}).get("endpoints", []):
                for s_name in svcs:
                    sp = {p.get("name") for p in objs[("Service", s_name)]["spec"].get("ports", [])}
                    if e.get("port") not in sp:
                        problem(f"{d['_file']}: ServiceMonitor port {e.get('port')} is no port of Service {s_name}")
        if kind == "Deployment":
            pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in pod.get("containers", []):
                check_container(f"{d['_file']}: Deployment {name} container {c.get('name')}",
                                c, pod, objs, env_names, flags)
    return finish(str(directory))


def main(argv):
    if len(argv) != 3 or argv[1] not in ("dockerfile", "compose", "k8s"):
        print(__doc__, file=sys.stderr)
        return 2
    return {"dockerfile": check_dockerfile, "compose": check_compose, "k8s": check_k8s}[argv[1]](argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
