"""docker-compose.yml: valid against the compose specification, and wired as documented.

No Docker engine runs here, so the wiring is checked from the files: every variable a
service reads is in .dev.env, healthchecks and depends_on conditions are in place, no
port is published beyond 127.0.0.1, and the containers run exactly the commands that
scripts/run-native runs.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import docker_build_context

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PYTHON_SERVICES = ("poller", "virtual_server")
TOKEN_SCRIPT = ROOT / "influxdb" / "init" / "10-service-tokens.sh"


def read_env_file(path: Path = ROOT / ".dev.env") -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            assert m.group(1) not in env, f".dev.env sets {m.group(1)} twice"
            env[m.group(1)] = m.group(2)
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def dev_env() -> dict[str, str]:
    return read_env_file()


def test_validates_against_compose_spec() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    assert exe.exists(), "check-jsonschema is not installed in this environment (pip install check-jsonschema)"
    run = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_services_and_no_obsolete_version(compose: dict[str, Any]) -> None:
    assert "version" not in compose
    assert set(compose["services"]) == {"postgres", "db-upgrade", "influxdb", "grafana", "poller", "virtual_server"}
    for name, svc in compose["services"].items():
        assert svc.get("env_file") == ".dev.env", f"{name} does not read .dev.env"


def test_dev_env_is_one_plain_file(dev_env: dict[str, str]) -> None:
    """Plain KEY=VALUE lines, so compose's env_file, python-dotenv and run-native read the same."""
    for line in (ROOT / ".dev.env").read_text().splitlines():
        assert not line.strip() or line.lstrip().startswith("#") or re.match(r"^[A-Za-z_]\w*=", line), line
    for key, value in dev_env.items():
        assert not value.startswith(("'", '"')), f"{key}: no quotes (env_file and dotenv differ on them)"
        assert " #" not in value and "$" not in value, f"{key}: no inline comments or interpolation"
        if re.search(r"PASSWORD|TOKEN", key):
            assert "dev-only" in value, f"{key} must be an obvious development value"
    # what InfluxDB is set up with is what the poller and Grafana use
    assert dev_env["DOCKER_INFLUXDB_INIT_ORG"] == dev_env["INFLUXDB_ORG"]
    assert dev_env["DOCKER_INFLUXDB_INIT_BUCKET"] == dev_env["INFLUXDB_BUCKET"]
    assert dev_env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == dev_env["INFLUXDB_TOKEN"]
    assert dev_env["POSTGRES_READER_USER"] != dev_env["POSTGRES_USER"]
    assert dev_env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert dev_env["POSTGRES_HOST"] == "postgres"
    assert dev_env["INFLUXDB_URL"] == "http://influxdb:8086"


def env_names_in_python(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        text = path.read_text()
        names |= set(re.findall(r'\b(?:get|get_int|getenv|environ\.get|env\.get)\(\s*"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r'environ\[\s*"([A-Z][A-Z0-9_]+)"\s*\]', text))
    return names


def env_names_in_shell(path: Path) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", path.read_text()))


def test_every_variable_a_service_reads_is_set(compose: dict[str, Any], dev_env: dict[str, str]) -> None:
    services = compose["services"]

    def available(service: str) -> set[str]:
        return set(dev_env) | set(services[service].get("environment") or {})

    # GLIBC_TUNABLES is glibc's own, looked at only to leave an operator's malloc setting alone (poller/loop.py)
    python_reads = env_names_in_python(sorted((ROOT / "poller").glob("*.py")) +
                                       sorted((ROOT / "virtual_server").glob("*.py"))) - {"GLIBC_TUNABLES"}
    assert {"POSTGRES_HOST", "INFLUXDB_URL", "POLL_CRON"} <= python_reads, "settings not found in the sources"
    # INFLUXDB_TOKEN_FILE is optional: only the poller's container has a token file
    wrapper_reads = env_names_in_shell(ROOT / "scripts" / "service-env") - {"INFLUXDB_TOKEN_FILE"}
    assert "INFLUXDB_TOKEN_FILE" in services["poller"]["environment"]
    for service in PYTHON_SERVICES:
        missing = (python_reads | wrapper_reads) - available(service)
        assert not missing, f"{service} reads {sorted(missing)}, which .dev.env does not set"

    role_reads = env_names_in_shell(ROOT / "db" / "10-poller-role.sh")
    assert not role_reads - available("postgres"), sorted(role_reads - available("postgres"))
    # set by the influxdb image itself after setup
    influx_reads = env_names_in_shell(TOKEN_SCRIPT) - {
        "DOCKER_INFLUXDB_INIT_BUCKET_ID", "DOCKER_INFLUXDB_INIT_ORG_ID", "DOCKER_INFLUXDB_INIT_USER_ID",
        "EMM_TOKEN_ROOT"}  # the last: tests only
    influx_reads |= {"DOCKER_INFLUXDB_INIT_MODE", "DOCKER_INFLUXDB_INIT_USERNAME", "DOCKER_INFLUXDB_INIT_PASSWORD",
                     "DOCKER_INFLUXDB_INIT_ORG", "DOCKER_INFLUXDB_INIT_BUCKET", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"}
    assert not influx_reads - available("influxdb"), sorted(influx_reads - available("influxdb"))

    grafana_reads = {"GF_SECURITY_ADMIN_USER", "GF_SECURITY_ADMIN_PASSWORD", "GF_AUTH_ANONYMOUS_ENABLED"}
    for path in sorted((ROOT / "grafana" / "provisioning").rglob("*.y*ml")):
        text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
        grafana_reads |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text))
    assert not grafana_reads - available("grafana"), sorted(grafana_reads - available("grafana"))


def test_images_pinned_and_official(compose: dict[str, Any]) -> None:
    images = {name: svc.get("image", "") for name, svc in compose["services"].items()}
    assert re.fullmatch(r"postgres:\d+\.\d+[-\w.]*", images["postgres"]), images["postgres"]
    assert re.fullmatch(r"influxdb:2\.\d+\.\d+[-\w.]*", images["influxdb"]), images["influxdb"]
    assert re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+[-\w.]*", images["grafana"]), images["grafana"]


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "-h 127.0.0.1" in " ".join(services["postgres"]["healthcheck"]["test"]), \
        "over TCP, so the service is not healthy while the init scripts run"
    assert services["influxdb"]["healthcheck"]["test"][1:3] == ["influx", "ping"]
    assert services["grafana"]["healthcheck"]["test"]
    poller_deps = services["poller"]["depends_on"]
    assert poller_deps["postgres"]["condition"] == "service_healthy"
    assert poller_deps["influxdb"]["condition"] == "service_healthy"
    assert services["virtual_server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the schema is brought up to date before anything reads it
    upgrade = services["db-upgrade"]
    assert upgrade["depends_on"]["postgres"]["condition"] == "service_healthy" and upgrade["restart"] == "no"
    assert "./db/upgrade.sql:/upgrade.sql:ro" in upgrade["volumes"] and "-f /upgrade.sql" in upgrade["command"][-1]
    assert upgrade["image"] == services["postgres"]["image"]
    for name in ("poller", "virtual_server"):
        assert services[name]["depends_on"]["db-upgrade"]["condition"] == "service_completed_successfully"
    for name in PYTHON_SERVICES:
        assert services[name]["restart"] == "unless-stopped"


def published(svc: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            parts = str(port).split(":")
            out.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else ""))
    return out


def test_nothing_published_beyond_loopback(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for host_ip, _ in published(svc):
            assert host_ip == "127.0.0.1", f"{name} publishes a port on {host_ip or 'every address'}"
        assert svc.get("network_mode") != "host", name
    assert published(compose["services"]["postgres"]) and published(compose["services"]["influxdb"])
    for name in PYTHON_SERVICES:
        assert not compose["services"][name].get("ports"), f"{name} needs no published port"


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """target -> 'source[:ro]' of the short volume syntax."""
    out = {}
    for volume in svc.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = source + (":" + mode[0] if mode else "")
    return out


def test_postgres_init_scripts_run_in_order(compose: dict[str, Any]) -> None:
    initdb = {t: s for t, s in mounts(compose["services"]["postgres"]).items()
              if t.startswith("/docker-entrypoint-initdb.d/")}
    order = [initdb[t].removesuffix(":ro") for t in sorted(initdb)]  # the image runs them sorted by name
    assert order == ["./db/init.sql", "./db/10-poller-role.sh"]
    for source in order:
        assert (ROOT / source).is_file()
    assert (ROOT / "db" / "10-poller-role.sh").stat().st_mode & stat.S_IXUSR


def test_db_upgrade_command_upgrades_an_earlier_database(compose: dict[str, Any], dev_env: dict[str, str],
                                                          postgres) -> None:
    """The db-upgrade service's own command line, run here with .dev.env and only the server's
    address and login overridden (as the container gets them), upgrades a first-release database."""
    svc = compose["services"]["db-upgrade"]
    script = svc["command"][-1].replace("$$", "$")  # compose's escape for a literal $
    for target, source in mounts(svc).items():
        script = script.replace(target, str(ROOT / source.removesuffix(":ro")))
    name = f"emm_compose_upgrade_{os.getpid()}"
    postgres.create_database(name, init=False)
    try:
        postgres.psql(name, "-f", str(ROOT / "tests" / "schemas" / "init-d8783b0.sql"))
        env = {**os.environ, **dev_env, "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(postgres.port),
               "POSTGRES_USER": postgres.user, "POSTGRES_PASSWORD": postgres.password, "POSTGRES_DB": name}
        done = subprocess.run(svc["command"][:-1] + [script], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        columns = postgres.psql(name, "-At", "-c", "SELECT column_name FROM information_schema.columns "
                                                   "WHERE table_name = 'energy_meters'").stdout.split()
        assert {"transport", "baudrate", "parity", "stopbits", "bytesize"} <= set(columns)
    finally:
        postgres.drop_database(name)


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = mounts(compose["services"]["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning:ro"
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/emm.yaml").read_text())["providers"]
    for provider in providers:
        assert grafana[provider["options"]["path"]] == "./grafana/dashboards:ro"


GRAFANA_TOKEN_FILE = "/var/lib/emm-grafana-token/influxdb-read.token"


def test_influxdb_tokens_for_the_poller_and_grafana(compose: dict[str, Any], dev_env: dict[str, str]) -> None:
    """The poller writes and Grafana reads with their own tokens, which the influxdb init
    script leaves in one volume each, mounted read-only by that service only."""
    services = compose["services"]
    influx, poller, grafana = services["influxdb"], services["poller"], services["grafana"]
    assert mounts(influx)["/docker-entrypoint-initdb.d"] == "./influxdb/init:ro"
    assert TOKEN_SCRIPT.stat().st_mode & stat.S_IXUSR, "the image runs only executable *.sh scripts"
    for name in ("bash", "sh"):
        subprocess.run([name, "-n", str(TOKEN_SCRIPT)], check=True)
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/influxdb.yaml").read_text())
    header = datasource["datasources"][0]["secureJsonData"]["httpHeaderValue1"]
    assert header == "Token $__file{" + GRAFANA_TOKEN_FILE + "}"
    for svc, token_file in ((poller, poller["environment"]["INFLUXDB_TOKEN_FILE"]), (grafana, GRAFANA_TOKEN_FILE)):
        token_dir = str(Path(token_file).parent)
        volume = mounts(svc)[token_dir]
        assert volume.endswith(":ro")
        assert volume.split(":")[0] == mounts(influx)[token_dir]
        holders = [n for n, other in services.items() if token_dir in mounts(other)]
        assert sorted(holders) == sorted(["influxdb", next(n for n, s in services.items() if s is svc)])
    # Grafana faces the network: it holds no credential but its own admin login.
    secrets = {k for k in dev_env if re.search(r"PASSWORD|TOKEN|SECRET", k) and not k.startswith("GF_")}
    assert secrets and all(grafana["environment"].get(k) == "" for k in secrets), grafana["environment"]


def test_token_script_creates_a_write_token_and_a_read_token(tmp_path: Path, compose: dict[str, Any],
                                                              dev_env: dict[str, str]) -> None:
    """Run the init script with a stand-in `influx` CLI (InfluxDB 2 is not installable here)
    that answers `auth create --json` as influx 2.7 does: each service's file holds its
    own token, with the permission that service needs and no other."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    (bindir / "influx").write_text(
        "#!/bin/sh\n"
        f"echo \"$*\" >> {calls}\n"
        "n=$(wc -l < " + str(calls) + ")\n"
        'printf \'{\\n\\t"id": "0a1b",\\n\\t"token": "tok-%s==",\\n\\t"status": "active"\\n}\\n\' "$n"\n')
    (bindir / "influx").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "EMM_TOKEN_ROOT": str(tmp_path / "root"),
           "DOCKER_INFLUXDB_INIT_ORG": dev_env["DOCKER_INFLUXDB_INIT_ORG"],
           "DOCKER_INFLUXDB_INIT_BUCKET": dev_env["DOCKER_INFLUXDB_INIT_BUCKET"],
           "DOCKER_INFLUXDB_INIT_BUCKET_ID": "b0c1d2e3f4a5b6c7"}
    run = subprocess.run([str(TOKEN_SCRIPT)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    poller_file = tmp_path / "root" / compose["services"]["poller"]["environment"]["INFLUXDB_TOKEN_FILE"].lstrip("/")
    grafana_file = tmp_path / "root" / GRAFANA_TOKEN_FILE.lstrip("/")
    assert poller_file.read_text() == "tok-1==" and grafana_file.read_text() == "tok-2=="
    for path in (poller_file, grafana_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
    write, read = calls.read_text().splitlines()
    assert "--write-bucket b0c1d2e3f4a5b6c7" in write and "--read" not in write
    assert "--read-bucket b0c1d2e3f4a5b6c7" in read and "--write" not in read
    assert all(f"--org {dev_env['DOCKER_INFLUXDB_INIT_ORG']}" in c for c in (write, read))

    (bindir / "influx").write_text("#!/bin/sh\necho 'Error: unauthorized access'\n")
    failed = subprocess.run([str(TOKEN_SCRIPT)], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "no token in: Error: unauthorized access" in failed.stderr


def test_simulator_answers_at_the_seed_meters_address(compose: dict[str, Any]) -> None:
    seed = re.search(r"INSERT INTO energy_meters .*?VALUES\s*\(\s*'([^']+)',\s*(\d+)",
                     (ROOT / "db" / "init.sql").read_text(), re.S)
    assert seed, "seed meter not found in db/init.sql"
    host, port = seed.group(1), int(seed.group(2))
    sim = compose["services"]["virtual_server"]
    assert host in sim["networks"]["default"]["aliases"]
    from virtual_server.__main__ import parse_args  # the port the simulator listens on by default
    command = sim["command"]
    assert parse_args(command[command.index("virtual_server") + 1:]).port == port
    assert sim["sysctls"]["net.ipv4.ip_unprivileged_port_start"] == "0" or port >= 1024


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [line for line in path.read_text().splitlines() if line.startswith("CMD ")]
    assert len(cmds) == 1
    return json.loads(cmds[0][4:])


def test_commands_match_the_native_run_and_dockerfiles(compose: dict[str, Any]) -> None:
    run = subprocess.run([str(ROOT / "scripts" / "run-native"), "--print-commands"],
                         capture_output=True, text=True, check=True)
    native = json.loads(run.stdout)
    for name in PYTHON_SERVICES:
        svc = compose["services"][name]
        assert svc["command"] == native[name], f"{name}: compose and scripts/run-native differ"
        dockerfile = ROOT / svc["build"]["dockerfile"]
        assert svc["build"]["context"] == "."
        assert dockerfile_cmd(dockerfile) == svc["command"]
    # run-native adds only the simulator's local address to the compose command
    text = (ROOT / "scripts" / "run-native").read_text()
    assert '"${SIMULATOR_CMD[@]}" --host 127.0.0.1 --port "$sim_port"' in text
    assert re.search(r'^"\$\{POLLER_CMD\[@\]\}" >', text, re.M)


def test_image_build_context_installs_the_services(tmp_path: Path, compose: dict[str, Any]) -> None:
    """What the Dockerfiles do, without Docker: from the build context (.dockerignore
    applied), `pip install .` gives both packages, and each container's command is there.
    (tests/test_dashboards.py runs both services from such a context.)"""
    context = docker_build_context(tmp_path / "context")
    for secret in (".dev.env", ".git", ".venv", "tests"):
        assert not (context / secret).exists(), f"{secret} would be in the images"
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), "."], cwd=context, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    for name in PYTHON_SERVICES:
        command = compose["services"][name]["command"]
        assert os.access(context / command[0], os.X_OK), f"{command[0]} is not in the {name} image"
        where = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__file__)"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, check=True).stdout
        assert where.startswith(str(site)), f"{name} imported from {where}, not from the installed package"
        helped = subprocess.run([sys.executable, "-m", name, "--help"], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert helped.returncode == 0 and "usage:" in helped.stdout, helped.stderr
    # `emm maps` in the poller's container (WORKDIR /app = the context): the library is there
    library = sorted(Path(p).name for p in subprocess.run(["git", "ls-files", "db/maps/*.sql"], cwd=ROOT,
                                                           capture_output=True, text=True, check=True).stdout.split())
    assert sorted(p.name for p in (context / "db" / "maps").glob("*.sql")) == library
    nowhere = {**env, "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "1"}  # no database: the files still list
    listed = subprocess.run([sys.executable, "-m", "poller.onboard", "--env-file", "/nonexistent", "maps", "list"],
                            cwd=context, env=nowhere, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1 and all(name in listed.stdout for name in library), listed.stdout + listed.stderr


@pytest.mark.parametrize("service", PYTHON_SERVICES)
def test_dockerfile(service: str) -> None:
    text = (ROOT / service / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?", base), f"pinned slim Python, not {base}"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^RUN pip install \.", text, re.M), "dependencies from the project's pyproject.toml"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for secret in (".dev.env", ".venv/", ".git/", ".native/"):
        assert secret in ignored, f".dockerignore must exclude {secret}"
