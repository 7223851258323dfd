"""The deployment definitions load, point at real flows, and carry valid parameters and schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())


def test_every_deployment_names_a_work_pool_and_an_entrypoint():
    names = [d["name"] for d in SPEC["deployments"]]
    assert {"experiment", "nightly-reevaluation"} <= set(names)
    assert len(names) == len(set(names))
    for deployment in SPEC["deployments"]:
        assert deployment["work_pool"]["name"].startswith("sae-transfer-")
        path, _, name = deployment["entrypoint"].partition(":")
        assert (ROOT / path).exists() and name


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_parameters_validate_against_the_flow(deployment, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    flow.validate_parameters(deployment.get("parameters", {}))  # raises on unknown / ill-typed parameters
    params = deployment.get("parameters", {})
    if "preset" in params:  # the experiment's own config must be valid too, not only its types
        from sae_core.config import build_config

        build_config(params["preset"], params.get("overrides"))
    if "runner" in params:  # the runner builds with the work pool's environment
        from flows.runners import task_runner

        for key, value in deployment["work_pool"].get("job_variables", {}).get("env", {}).items():
            monkeypatch.setenv(key, str(value))
        task_runner(params["runner"])
    if "metrics" in params:
        from sae_core.metrics.registry import settings_for

        for metric in params["metrics"]:
            settings_for(metric, params.get("metric_profile", "hub"), params.get("metric_overrides", {}).get(metric))


def test_schedules_are_valid_crons():
    from prefect.client.schemas.schedules import CronSchedule

    scheduled = [d for d in SPEC["deployments"] if d.get("schedules")]
    assert scheduled, "the re-evaluation deployment must be scheduled"
    for deployment in scheduled:
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone", "UTC"))


def test_readme_creates_every_pool_before_deploying_and_names_deployments_in_full(monkeypatch):
    """`prefect deploy --all` stops at the first deployment whose pool is missing; a deployment
    is run by FLOW/DEPLOYMENT, so the README must give that full name (the real-server check is
    tests/flows/test_deployments_server.py)."""
    from prefect.flows import load_flow_from_entrypoint

    from tests.flows.test_deployments_server import readme_commands

    commands = readme_commands()
    deploy_at = next(i for i, c in enumerate(commands) if c.startswith("prefect deploy"))
    created = {c.split()[3] for c in commands[:deploy_at] if c.startswith("prefect work-pool create")}
    assert {d["work_pool"]["name"] for d in SPEC["deployments"]} <= created, commands
    readme = (ROOT / "README.md").read_text()
    monkeypatch.chdir(ROOT)
    for deployment in SPEC["deployments"]:
        flow_name = load_flow_from_entrypoint(deployment["entrypoint"]).name
        assert f"`{flow_name}/{deployment['name']}`" in readme, f"README never names {flow_name}/{deployment['name']}"
