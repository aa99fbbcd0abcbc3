"""Kubernetes/OpenShift manifests (deploy/kubernetes, deploy/flexvolume/example-pod.yaml).

No kubelet or API server here: each manifest is parsed with PyYAML and the fields that decide
whether the mount works and stops cleanly are checked; the containers' environment is fed to
the real entrypoint (`s3pyfs-entrypoint command`) and the resulting command line to s3pyfs's own
parser, so an option s3pyfs does not know fails here rather than in a cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from deploy_support import DEPLOY, clean_env

K8S = DEPLOY / "kubernetes"
ENTRYPOINT = "/usr/local/bin/s3pyfs-entrypoint"


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert found, f"no {kind}"
    return found


def secret():
    return by_kind(load(K8S / "secret.yaml"), "Secret")[0]


def s3pyfs_container(pod_spec):
    containers = pod_spec.get("initContainers", []) + pod_spec["containers"]
    return next(c for c in containers if c["name"] == "s3pyfs")


def env_of(container) -> dict:
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            data = secret()
            assert ref["name"] == data["metadata"]["name"] and ref["key"] in data["stringData"], ref
            env[item["name"]] = f"placeholder-{ref['key'].lower()}"
    return env


def check_mount_container(pod_spec, shared_volume):
    """The checks every s3pyfs container shares; returns (container, its shared mountPath)."""
    c = s3pyfs_container(pod_spec)
    assert c["securityContext"]["privileged"] is True
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    # /dev/fuse from the host
    fuse = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/fuse")
    assert volumes[fuse["name"]]["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    # the mount point lies in a Bidirectional volume, so the mount leaves the container
    shared = mounts[shared_volume]
    assert shared["mountPropagation"] == "Bidirectional"
    env = env_of(c)
    assert env["MNT_POINT"].startswith(shared["mountPath"].rstrip("/") + "/")
    assert "AWS_KEY" in env and "AWS_SECRET_KEY" in env
    # stop = upload + unmount; probes = mount live
    assert c["lifecycle"]["preStop"]["exec"]["command"] == [ENTRYPOINT, "unmount"]
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"] == [ENTRYPOINT, "ready"], probe
        assert c[probe]["timeoutSeconds"] >= 5
    assert c["args"] == ["run"]
    assert pod_spec["terminationGracePeriodSeconds"] >= 60
    return c, shared["mountPath"]


def command_for(env: dict, tmp_path) -> list[str]:
    """What the entrypoint would run in that container, checked by s3pyfs's parser."""
    run_env = clean_env(S3PYFS_RUN_DIR=str(tmp_path / "run"), S3PYFS_BIN="s3pyfs", **env)
    result = subprocess.run([sys.executable, str(DEPLOY / "docker" / "s3pyfs-entrypoint"), "command"],
                            env=run_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split()
    from s3pyfs.cli import parse_args
    opts = parse_args(argv[1:])                    # raises UsageError for an unknown option
    assert opts.foreground and opts.allow_other
    return argv


def test_secret():
    docs = load(K8S / "secret.yaml")
    data = secret()
    assert data["type"] == "Opaque" and set(data["stringData"]) == {"AWS_KEY", "AWS_SECRET_KEY"}
    assert data["metadata"]["namespace"] == by_kind(docs, "Namespace")[0]["metadata"]["name"]


def test_daemonset_mounts_on_every_node_under_a_bidirectional_host_path(tmp_path):
    docs = load(K8S / "daemonset.yaml")
    ds = by_kind(docs, "DaemonSet")[0]
    assert ds["apiVersion"] == "apps/v1"
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert {"operator": "Exists"} in spec["tolerations"]
    sa = by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
    assert spec["serviceAccountName"] == sa
    c, mount_path = check_mount_container(spec, "buckets")
    host = next(v for v in spec["volumes"] if v["name"] == "buckets")["hostPath"]
    assert host == {"path": mount_path, "type": "DirectoryOrCreate"}
    run = next(v for v in spec["volumes"] if v["name"] == "run")
    assert run["emptyDir"]["medium"] == "Memory"
    assert any(m["mountPath"] == "/run/s3pyfs" for m in c["volumeMounts"])
    assert c["livenessProbe"]["exec"]["command"] == [ENTRYPOINT, "ready"]
    env = env_of(c)
    argv = command_for(env, tmp_path)
    assert argv[1:3] == ["photos", "/mnt/s3pyfs/photos"]

    # A consumer on the node: the same host path, HostToContainer, unprivileged.
    reader = [d for d in by_kind(docs, "Pod") if d["metadata"]["name"] == "photo-reader"][0]["spec"]
    vol = reader["volumes"][0]["hostPath"]
    assert vol["path"] == env["MNT_POINT"]
    mount = reader["containers"][0]["volumeMounts"][0]
    assert mount["mountPropagation"] == "HostToContainer"
    assert "securityContext" not in reader["containers"][0] or \
        not reader["containers"][0]["securityContext"].get("privileged")


def test_sidecar_pod_shares_the_mount_with_the_app(tmp_path):
    pod = by_kind(load(K8S / "sidecar-pod.yaml"), "Pod")[0]
    spec = pod["spec"]
    c, shared_path = check_mount_container(spec, "shared")
    # a native sidecar: started before the app (which waits for its startupProbe), stopped after
    assert c in spec["initContainers"] and c["restartPolicy"] == "Always"
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "shared")
    app = next(x for x in spec["containers"] if x["name"] == "app")
    app_mount = next(m for m in app["volumeMounts"] if m["name"] == "shared")
    assert app_mount["mountPropagation"] == "HostToContainer"
    assert not app.get("securityContext", {}).get("privileged")
    env = env_of(c)
    app_view = app_mount["mountPath"] + env["MNT_POINT"][len(shared_path):]
    assert app_view in " ".join(app["command"])      # the app uses the bucket where it appears
    # the files belong to the app's user
    argv = command_for(env, tmp_path)
    opts = argv[argv.index("-o") + 1].split(",")
    assert f"uid={app['securityContext']['runAsUser']}" in opts
    assert f"gid={app['securityContext']['runAsGroup']}" in opts
    assert "url=https://minio.minio.svc:9000" in opts and "use_path_request_style" in opts


def test_openshift_scc_and_context_option(tmp_path):
    scc = load(K8S / "openshift-scc.yaml")[0]
    assert scc["kind"] == "SecurityContextConstraints"
    assert scc["allowPrivilegedContainer"] is True and scc["allowHostDirVolumePlugin"] is True
    assert "SYS_ADMIN" in scc["allowedCapabilities"] and "hostPath" in scc["volumes"]
    sa = by_kind(load(K8S / "daemonset.yaml"), "ServiceAccount")[0]["metadata"]
    assert f"system:serviceaccount:{sa['namespace']}:{sa['name']}" in scc["users"]
    notes = (K8S / "OPENSHIFT.md").read_text()
    assert "oc adm policy add-scc-to-user privileged -z s3pyfs -n s3pyfs" in notes
    # every S3PYFS_OPTIONS value in the notes is accepted by s3pyfs and reaches the kernel whole
    values = re.findall(r"value: (.*context=.*)", notes)
    assert values and "context=system_u:object_r:openshift_rw_file_t:s0" in values[0]
    ds = by_kind(load(K8S / "daemonset.yaml"), "DaemonSet")[0]["spec"]["template"]["spec"]
    env = env_of(s3pyfs_container(ds))
    for value in values + ['context="system_u:object_r:container_file_t:s0:c12,c34"']:
        env["S3PYFS_OPTIONS"] = value
        argv = command_for(env, tmp_path)
        from s3pyfs.cli import parse_args
        opts = parse_args(argv[1:])
        item = value[value.index("context="):]       # the last option in these values
        assert item in opts.kernel_options, (value, opts.kernel_options)


def test_flexvolume_example_pod_matches_the_driver():
    pod = load(DEPLOY / "flexvolume" / "example-pod.yaml")[0]
    volume = pod["spec"]["volumes"][0]["flexVolume"]
    vendor, driver = volume["driver"].split("/")
    assert (DEPLOY / "flexvolume" / f"{vendor}~{driver}" / driver).exists()
    assert volume["secretRef"]["name"] == secret()["metadata"]["name"]
    source = (DEPLOY / "flexvolume" / f"{vendor}~{driver}" / driver).read_text()
    for key in volume["options"]:
        assert f'"{key}"' in source, f"option {key} unknown to the driver"
    assert all(isinstance(v, str) for v in volume["options"].values())   # FlexVolume options are strings
    for key in secret()["stringData"]:
        assert key.lower().replace("_", "") in source                       # accepted secret key names


@pytest.mark.parametrize("path", sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")))
def test_every_manifest_parses_and_has_kind_and_name(path):
    for doc in load(DEPLOY / path):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], (path, doc)
