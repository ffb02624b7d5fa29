"""The Kubernetes work-pool example (deploy/kubernetes): a base job template Prefect accepts, rendering to a
GPU Job, and a deployment whose parameters make a valid pipeline config that launches torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from patchrec.profiles import load_pipeline

HERE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def _template() -> dict:
    return json.loads((HERE / "base-job-template.json").read_text())


def test_the_base_job_template_is_one_prefect_accepts():
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name="patchrec-k8s", type="kubernetes", base_job_template=_template())
    assert pool.base_job_template["job_configuration"]["job_manifest"]["kind"] == "Job"


def test_the_deployment_renders_a_gpu_job_with_the_shared_state_volume():
    from prefect.utilities.templating import apply_values

    tpl = _template()
    deployment = yaml.safe_load((HERE / "prefect.yaml").read_text())["deployments"][0]
    props = tpl["variables"]["properties"]
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update(deployment["work_pool"]["job_variables"], name="patchrec", command="prefect flow-run execute")
    assert set(deployment["work_pool"]["job_variables"]) <= set(props)  # no variable the template lacks
    job = apply_values(tpl["job_configuration"], values)["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == deployment["work_pool"]["job_variables"]["image"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/state"]]["persistentVolumeClaim"]["claimName"] == "patchrec-state"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert container["env"]["PATCHREC_STATE"] == "/state"


def test_the_deployment_parameters_are_a_valid_torchrun_pipeline(tmp_path):
    deployment = yaml.safe_load((HERE / "prefect.yaml").read_text())["deployments"][0]
    params = deployment["parameters"]
    assert deployment["entrypoint"] == "flows/pipeline.py:patchrec_flow"
    cfg = load_pipeline(params["profile"], params["overrides"], str(tmp_path))
    assert cfg.launch.world == deployment["work_pool"]["job_variables"]["gpus"] == 4
