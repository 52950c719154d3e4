"""Meter alerts: grafana/provisioning/alerting/ (rule group, contact point, notification policy).

Grafana itself has no package here, so its provisioning files are checked three ways:

- shape: every file validates against tests/schemas/grafana-alerting-provisioning.schema.json,
  written from Grafana's documented file-provisioning format, before and after Grafana's
  environment interpolation; and the names in them resolve (receivers, mute timings, refIds,
  the datasource uid);
- routing: with the settings of .dev.env, nothing is sent (the muted route), and with a webhook
  configured, the alerts reach it; Grafana's interpolation ($VAR, ${VAR}, unset = empty, $$ = $)
  is reproduced here as pkg/services/provisioning/values does it;
- queries: each rule's InfluxQL, exactly as written in the file, runs on Debian's InfluxDB 1.6
  (tests/servers.py, InfluxDB1) over poller_status points made by the poller's own code
  (poller.sink.SeriesKeys.status_line), and Grafana's reduce and threshold expressions, read
  from the file, are applied to what it returns: the rule fires for the meter whose up went to 0
  (or that went silent), and for no other.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.servers import InfluxDB1
from tests.test_dashboards import read_env_file

ROOT = Path(__file__).resolve().parents[1]
ALERTING = ROOT / "grafana" / "provisioning" / "alerting"
SCHEMA = json.loads((ROOT / "tests" / "schemas" / "grafana-alerting-provisioning.schema.json").read_text())
DB = "energy"


def documents() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(ALERTING.iterdir())}


def collect(key: str, docs: Mapping[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [item for doc in (docs or documents()).values() for item in doc.get(key, [])]


def rules() -> dict[str, dict[str, Any]]:
    return {r["title"]: r for g in collect("groups") for r in g["rules"]}


# --------------------------------------------------------------------------- Grafana's interpolation


def go_expand_env(text: str, env: Mapping[str, str]) -> str:
    """Go's os.ExpandEnv: ${NAME} or $NAME (letters, digits, _), an unset name is empty."""
    return re.sub(r"\$\{([^}]*)\}|\$([A-Za-z0-9_]+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def grafana_interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """A provisioning value as Grafana reads it (values.interpolateValue): every string split on
    '$$' (which stays a '$'), each part through os.ExpandEnv; maps and lists walked."""
    if isinstance(value, str):
        return "$".join(go_expand_env(part, env) for part in value.split("$$"))
    if isinstance(value, dict):
        return {k: grafana_interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [grafana_interpolate(v, env) for v in value]
    return value


def as_grafana_reads(docs: Mapping[str, dict[str, Any]], env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The documents after interpolation, where Grafana 11 interpolates: rule labels (not
    annotations, not the query models), contact point settings, notification policies."""
    out = json.loads(json.dumps(docs))
    for doc in out.values():
        for group in doc.get("groups", []):
            for rule in group["rules"]:
                rule["labels"] = grafana_interpolate(rule.get("labels", {}), env)
        for cp in doc.get("contactPoints", []):
            for receiver in cp["receivers"]:
                receiver["settings"] = grafana_interpolate(receiver["settings"], env)
        doc["policies"] = grafana_interpolate(doc.get("policies", []), env)
        if not doc["policies"]:
            del doc["policies"]
    return out


# --------------------------------------------------------------------------- Alertmanager's routing


def matches(matcher: list[str], labels: Mapping[str, str]) -> bool:
    name, op, value = matcher
    have = labels.get(name, "")  # an absent label and an empty one are the same to Alertmanager
    if op in ("=", "!="):
        return (have == value) == (op == "=")
    return bool(re.fullmatch(value, have)) == (op == "=~")


def route(labels: Mapping[str, str], docs: Mapping[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """(receiver, mute timings) of the policy an alert with these labels lands on."""
    [root] = collect("policies", docs)
    node = root
    while True:
        child = next((r for r in node.get("routes", [])
                      if all(matches(m, labels) for m in r.get("object_matchers", []))), None)
        if child is None:
            return node["receiver"], node.get("mute_time_intervals", [])
        assert not child.get("continue"), "routing with continue: not modelled here"
        node = {**child, "receiver": child.get("receiver", node["receiver"])}


def always(mute_timing: dict[str, Any]) -> bool:
    """A mute timing that holds at every moment: a weekday range covering the week, nothing else."""
    week = {"monday:sunday"}
    return any(set(i) == {"weekdays"} and set(i["weekdays"]) == week for i in mute_timing["time_intervals"])


def rule_labels(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    docs = as_grafana_reads(documents(), env)
    # Grafana drops a label whose value is empty
    return {r["title"]: {k: v for k, v in r["labels"].items() if v} | {"alertname": r["title"]}
            for g in collect("groups", docs) for r in g["rules"]}


# --------------------------------------------------------------------------- shape


def test_files_are_grafana_provisioning_documents() -> None:
    """Grafana refuses a file in provisioning/alerting without a .yaml, .yml or .json suffix (and
    does not start); each document validates against the documented shape, as written and as
    Grafana reads it with any settings."""
    assert sorted(p.name for p in ALERTING.iterdir()) == [
        "contact-points.yaml", "notification-policies.yaml", "rules.yaml"]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for env in ({}, {"EMM_ALERT_NOTIFICATIONS": "off"},
                {"EMM_ALERT_NOTIFICATIONS": "on", "EMM_ALERT_WEBHOOK_URL": "https://ntfy.example/emm"}):
        for name, doc in as_grafana_reads(documents(), env).items():
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, (name, env, errors)
    # the schema does refuse what Grafana refuses
    bad = documents()["rules.yaml"]
    bad["groups"][0]["rules"][0]["noDataState"] = "Firing"
    assert not validator.is_valid(bad)
    bad = as_grafana_reads(documents(), {})["contact-points.yaml"]
    bad["contactPoints"][0]["receivers"][0]["settings"]["url"] = ""
    assert not validator.is_valid(bad), "an empty webhook url stops Grafana at start"


def test_names_resolve() -> None:
    datasources = [d for f in sorted((ROOT / "grafana/provisioning/datasources").glob("*.y*ml"))
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    uids = {d["uid"] for d in datasources if d["type"] == "influxdb"}
    receivers = {cp["name"] for cp in collect("contactPoints")}
    mute_timings = {m["name"] for m in collect("muteTimes")}
    [root] = collect("policies")
    policies = [root, *root.get("routes", [])]
    assert all(p.get("receiver", root["receiver"]) in receivers for p in policies)
    assert all(set(p.get("mute_time_intervals", [])) <= mute_timings for p in policies)
    dashboard_folder = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/emm.yaml").read_text())[
        "providers"][0]["folder"]
    all_uids = []
    for group in collect("groups"):
        assert group["folder"] != dashboard_folder, "alerting and dashboards would both create that folder"
        for rule in group["rules"]:
            all_uids.append(rule["uid"])
            refs = [d["refId"] for d in rule["data"]]
            assert rule["condition"] in refs
            for i, d in enumerate(rule["data"]):
                assert d["model"]["refId"] == d["refId"]
                if d["datasourceUid"] == "__expr__":
                    assert d["model"]["expression"] in refs[:i], "an expression reads an earlier query"
                else:
                    assert d["datasourceUid"] in uids and d["model"]["datasource"]["uid"] in uids
                    assert d["model"]["rawQuery"] is True
    assert len(all_uids) == len(set(all_uids))


def test_interpolation_touches_only_the_settings() -> None:
    """Grafana interpolates labels, contact point settings and policies, not annotations or
    query models: annotations may use {{ $labels.meter }}, and the queries hold no '$' at all
    (no macro for a Grafana version to mangle); the only variables are the EMM_ALERT_* settings."""
    for title, rule in rules().items():
        for d in rule["data"]:
            assert "$" not in json.dumps(d["model"]), title
        assert "{{ $labels.meter }}" in rule["annotations"]["summary"]
    docs = documents()
    interpolated = json.dumps([[r["labels"] for r in rules().values()], collect("contactPoints"),
                               collect("policies"), collect("muteTimes")])
    assert set(re.findall(r"\$\{?(\w+)", interpolated)) == {"EMM_ALERT_NOTIFICATIONS", "EMM_ALERT_WEBHOOK_URL"}
    assert grafana_interpolate("a$$b ${X}c $X", {"X": "1"}) == "a$b 1c 1"
    assert as_grafana_reads(docs, {})["rules.yaml"]["groups"][0]["rules"][0]["annotations"] == \
        docs["rules.yaml"]["groups"][0]["rules"][0]["annotations"]


# --------------------------------------------------------------------------- routing


def webhook(env: Mapping[str, str]) -> dict[str, Any]:
    [cp] = collect("contactPoints", as_grafana_reads(documents(), env))
    [receiver] = cp["receivers"]
    assert receiver["type"] == "webhook"
    return receiver["settings"]


@pytest.mark.parametrize("env, muted", [
    ({"EMM_ALERT_NOTIFICATIONS": "off", "EMM_ALERT_WEBHOOK_URL": ""}, True),
    ({"EMM_ALERT_NOTIFICATIONS": "off", "EMM_ALERT_WEBHOOK_URL": "https://ntfy.example/emm"}, True),
    ({"EMM_ALERT_NOTIFICATIONS": "on", "EMM_ALERT_WEBHOOK_URL": "https://ntfy.example/emm?x=1"}, False),
])
def test_notifications_go_out_only_when_switched_on(env: dict[str, str], muted: bool) -> None:
    docs = as_grafana_reads(documents(), env)
    mute_timings = {m["name"]: m for m in collect("muteTimes", docs)}
    for title, labels in rule_labels(env).items():
        receiver, mutes = route(labels, docs)
        assert receiver == "EMM operator", title
        assert any(always(mute_timings[m]) for m in mutes) == muted, (title, labels)
    url = webhook(env)["url"]
    assert url, "Grafana would not start with an empty webhook url"
    if env["EMM_ALERT_WEBHOOK_URL"]:
        # the '#' the file adds is a fragment: not part of the request
        assert urlsplit(url)._replace(fragment="").geturl() == env["EMM_ALERT_WEBHOOK_URL"]
        assert urlsplit(url).scheme == "https"


def test_unset_settings_still_start_grafana() -> None:
    """An .dev.env from before the alerts (neither variable): Grafana still starts (a webhook url
    of '#', never used while muted); the alerts are then not muted, and their delivery fails
    with a logged error until the two settings are added."""
    assert webhook({})["url"] == "#"
    assert rule_labels({})["Meter down"] == {"alertname": "Meter down"}


def test_shipped_settings_send_nothing() -> None:
    """.dev.env sets both variables, notifications off: Grafana shows the alerts and sends nothing."""
    dev_env = read_env_file()
    missing = {"EMM_ALERT_NOTIFICATIONS", "EMM_ALERT_WEBHOOK_URL"} - set(dev_env)
    assert not missing, f".dev.env lacks {sorted(missing)} (README 'Alerts')"
    assert dev_env["EMM_ALERT_NOTIFICATIONS"] == "off"
    docs = as_grafana_reads(documents(), dev_env)
    mute_timings = {m["name"]: m for m in collect("muteTimes", docs)}
    for labels in rule_labels(dev_env).values():
        assert any(always(mute_timings[m]) for m in route(labels, docs)[1])


# --------------------------------------------------------------------------- the rules on InfluxDB


@dataclass(frozen=True)
class Status:
    """One cycle's outcome for a meter, as poller.sink.MeterStatus describes it."""

    ok: bool
    time_ms: int
    duration_s: float = 0.01
    requests: int = 1
    errors: int = 0
    readings: int = 1


def status_lines(now_ms: int) -> list[str]:
    """poller_status points, written by the poller's own sink code, every 10 s:
    meter 1 fine; meter 2 up until 6 minutes ago, down since; meter 3 fine until 40 minutes ago,
    silent since; meter 4 seen 30 hours ago only; meter 5 down from 12 to 4 minutes ago, up again."""
    from poller.model import DeviceType, Meter
    from poller.sink import SeriesKeys

    keys = SeriesKeys()
    meters = {i: Meter(id=i, host="gw.example", port=502, slave_address=i, device_type=DeviceType("sdm630", ()),
                       description=f"Meter {i}") for i in range(1, 6)}
    minute = 60_000
    lines = []
    for age in range(0, 60 * minute, 10_000):
        t = now_ms - age
        lines.append(keys.status_line(meters[1], Status(True, t)))
        lines.append(keys.status_line(meters[2], Status(age > 6 * minute, t)))
        if age > 40 * minute:
            lines.append(keys.status_line(meters[3], Status(True, t)))
        lines.append(keys.status_line(meters[5], Status(not 4 * minute < age <= 12 * minute, t)))
    lines.append(keys.status_line(meters[4], Status(True, now_ms - 30 * 60 * minute)))
    return lines


@pytest.fixture(scope="module")
def influx() -> Iterator[tuple[Callable[[str], list[dict[str, Any]]], Callable[[str], list[dict[str, Any]]]]]:
    """(query on the database with the points, query on an empty one)."""
    with InfluxDB1() as server:
        server.create_database(DB)
        server.create_database("empty")
        status, answer = server.write(DB, "\n".join(status_lines(int(time.time() * 1000))))
        assert status == 204, answer
        yield (lambda q: server.query(DB, q)), (lambda q: server.query("empty", q))


REDUCERS = {"last": lambda v: v[-1], "mean": lambda v: sum(v) / len(v), "min": min, "max": max, "sum": sum,
            "count": len}


def evaluate(rule: dict[str, Any], run: Callable[[str], list[dict[str, Any]]]) -> dict[str, bool] | None:
    """The rule's condition per alert instance ({meter: firing}), or None for no data: its query
    through InfluxDB, then its reduce and threshold expressions as Grafana applies them."""
    frames: dict[str, dict[str, list[float]]] = {}  # refId -> {meter: values}
    results: dict[str, dict[str, float | bool]] = {}
    for d in rule["data"]:
        model = d["model"]
        if d["datasourceUid"] != "__expr__":
            series = run(model["query"])
            frames[d["refId"]] = {s.get("tags", {}).get("meter", ""): [r[1] for r in s["values"] if r[1] is not None]
                                  for s in series}
            if not frames[d["refId"]]:
                return None
        elif model["type"] == "reduce":
            reduce = REDUCERS[model["reducer"]]
            results[d["refId"]] = {k: reduce(v) for k, v in frames[model["expression"]].items()}
        elif model["type"] == "threshold":
            [condition] = model["conditions"]
            kind, [limit, *_] = condition["evaluator"]["type"], condition["evaluator"]["params"]
            assert kind in ("lt", "gt"), f"evaluator {kind} not modelled here"
            results[d["refId"]] = {k: (v < limit if kind == "lt" else v > limit)
                                   for k, v in results[model["expression"]].items()}
        else:
            raise AssertionError(f"expression type {model['type']} not modelled here")
    return {k: bool(v) for k, v in results[rule["condition"]].items()}


def firing(rule: dict[str, Any], run: Callable[[str], list[dict[str, Any]]]) -> set[str]:
    return {meter for meter, on in (evaluate(rule, run) or {}).items() if on}


def test_windows_are_the_relative_time_ranges() -> None:
    """The query's own window (now() - ...) is the one Grafana is given, and the pending period
    is whole evaluations: 5 minutes at 1 minute, so one lost reply or a poller restart never pages."""
    [group] = collect("groups")
    assert group["interval"] == "1m"
    for title, rule in rules().items():
        [query] = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
        found = re.findall(r"now\(\) - (\d+)([mh])", query["model"]["query"])
        windows = [int(n) * {"m": 60, "h": 3600}[unit] for n, unit in found]
        assert max(windows) == query["relativeTimeRange"]["from"] and query["relativeTimeRange"]["to"] == 0, title
        assert rule["for"] == "5m", title
        assert rule["execErrState"] == "Error", title


def test_meter_down_fires_for_the_meter_whose_up_went_to_0(influx) -> None:
    with_points, empty = influx
    rule = rules()["Meter down"]
    states = evaluate(rule, with_points)
    assert states == {"1": False, "2": True, "5": False}, "meter 5 recovered; meter 3 is the other rule's"
    assert firing(rule, with_points) == {"2"}
    # nothing in the last 15 minutes from anyone: the silent rule's case, not this one's
    assert evaluate(rule, empty) is None and rule["noDataState"] == "OK"


def test_meter_silent_fires_for_the_meter_that_stopped_reporting(influx) -> None:
    """Meter 3 reported until 40 minutes ago: it has a value (0) of its own, where a query over
    the last 15 minutes alone leaves it out (Grafana would then resolve its alert, not fire it)."""
    with_points, empty = influx
    rule = rules()["Meter silent"]
    states = evaluate(rule, with_points)
    assert states == {"1": False, "2": False, "3": True, "5": False}, "meter 4 was last seen 30 hours ago"
    assert "3" not in (evaluate(rules()["Meter down"], with_points) or {})
    # no poller_status at all for a day: no data, which this rule turns into an alert
    assert evaluate(rule, empty) is None and rule["noDataState"] == "Alerting"
