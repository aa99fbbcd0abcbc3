"""deploy/csi: every manifest against Kubernetes' own schema, plus what the driver relies on.

No API server here.  The schema is the one the `kubernetes` Python client is generated from
(its models' `openapi_types`/`attribute_map`): every field of every document must be a field of
its model, with a value of the model's type, and the client must deserialize the document
(which enforces required fields).  An API server would silently drop a misspelt field with a
warning; here it fails.  The OpenShift SecurityContextConstraints is not in that client; its
fields are listed below from openshift/api (security/v1).

Then the cross-document facts kubelet and the sidecars depend on: one driver name everywhere,
the registrar pointing at the socket the driver serves, Bidirectional propagation of the
kubelet directory, no staging paths, the Secrets the StorageClasses name, RBAC for the
provisioner's ServiceAccount, the SCC admitting the node plugin.
"""

from __future__ import annotations

import copy
import datetime
import re
from pathlib import Path

import pytest
import yaml

kubernetes = pytest.importorskip(
    "kubernetes", reason="the `kubernetes` client is a test dependency: pip install -e '.[test]'")
from kubernetes.client import ApiClient, models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CSI = ROOT / "deploy" / "csi"
DRIVER = "csi.s3pyfs.io"
SOCKET = "unix:///csi/csi.sock"

# apiVersion each kind must carry; the model is V1<Kind>.
API_VERSIONS = {
    "Namespace": "v1", "ServiceAccount": "v1", "Secret": "v1", "Pod": "v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1", "DaemonSet": "apps/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "CSIDriver": "storage.k8s.io/v1", "StorageClass": "storage.k8s.io/v1",
    "SecurityContextConstraints": "security.openshift.io/v1",
}

# openshift/api security/v1 SecurityContextConstraints: field -> type ("M" = any mapping).
SCC_FIELDS = {
    "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta", "priority": "int",
    "allowPrivilegedContainer": "bool", "defaultAddCapabilities": "List[str]",
    "requiredDropCapabilities": "List[str]", "allowedCapabilities": "List[str]",
    "allowHostDirVolumePlugin": "bool", "volumes": "List[str]", "allowedFlexVolumes": "List[object]",
    "allowHostNetwork": "bool", "allowHostPorts": "bool", "allowHostPID": "bool",
    "allowHostIPC": "bool", "defaultAllowPrivilegeEscalation": "bool",
    "allowPrivilegeEscalation": "bool", "seLinuxContext": "object", "runAsUser": "object",
    "supplementalGroups": "object", "fsGroup": "object", "readOnlyRootFilesystem": "bool",
    "users": "List[str]", "groups": "List[str]", "seccompProfiles": "List[str]",
    "allowedUnsafeSysctls": "List[str]", "forbiddenSysctls": "List[str]",
    "userNamespaceLevel": "str",
}
SCC_REQUIRED = ("allowPrivilegedContainer", "allowHostDirVolumePlugin", "allowHostNetwork",
                "allowHostPorts", "allowHostPID", "allowHostIPC", "readOnlyRootFilesystem")


# ------------------------------------------------------------------------------ loading
def manifest_files() -> list[Path]:
    return sorted(p for p in CSI.iterdir() if p.suffix in (".yaml", ".yml"))


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in manifest_files():
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((f"{path.name}#{i}", doc))
    return out


def all_docs() -> list[dict]:
    return [doc for _name, doc in documents()]


def of_kind(kind: str) -> list[dict]:
    found = [d for d in all_docs() if d.get("kind") == kind]
    assert found, f"no {kind} in deploy/csi"
    return found


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in of_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def container(pod_spec: dict, name: str) -> dict:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name}: {[c['name'] for c in pod_spec['containers']]}"
    return found[0]


def strings(value) -> list[str]:
    """Every string (keys and values) in a parsed document, comments excluded."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


# ------------------------------------------------------------------------------ schema walk
def _model(name: str):
    return getattr(models, name, None)


def schema_problems(value, type_name: str, path: str) -> list[str]:
    """Every place where `value` does not fit the client's type `type_name`."""
    if type_name == "object":
        return []
    # "List[X]"/"Dict[str, X]" (client >= 35), "list[X]"/"dict(str, X)" (older clients)
    m = re.fullmatch(r"[Ll]ist\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in schema_problems(item, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"Dict\[str, (.+)\]", type_name) or re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        return [p for k, item in value.items() for p in
                ([f"{path}: key {k!r} is not a string"] if not isinstance(k, str) else [])
                + schema_problems(item, m.group(1), f"{path}.{k}")]
    primitive = {"str": str, "bytes": str, "int": int, "float": (int, float), "bool": bool,
                 "datetime": (str, datetime.datetime)}
    if type_name in primitive:
        wanted = primitive[type_name]
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, wanted):
            return [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
        return []
    model = _model(type_name)
    if model is None:
        return [f"{path}: the client has no model {type_name}"]
    return fields_problems(value, model.attribute_map, model.openapi_types, path, type_name)


def fields_problems(value, attribute_map: dict, openapi_types: dict, path: str, what: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a {what} mapping, got {type(value).__name__}"]
    by_json = {json_name: attr for attr, json_name in attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in by_json:
            problems.append(f"{path}.{key}: unknown field of {what}")
            continue
        problems += schema_problems(item, openapi_types[by_json[key]], f"{path}.{key}")
    return problems


def document_problems(doc: dict) -> list[str]:
    """Schema problems of one manifest document (empty list: it fits)."""
    if not isinstance(doc, dict) or "kind" not in doc:
        return ["not a Kubernetes object (no kind)"]
    kind = doc["kind"]
    if kind not in API_VERSIONS:
        return [f"kind {kind!r} is not one this test knows"]
    problems = []
    if doc.get("apiVersion") != API_VERSIONS[kind]:
        problems.append(f"{kind}: apiVersion {doc.get('apiVersion')!r}, expected {API_VERSIONS[kind]!r}")
    if not doc.get("metadata", {}).get("name"):
        problems.append(f"{kind}: metadata.name missing")
    if kind == "SecurityContextConstraints":
        problems += fields_problems(doc, {k: k for k in SCC_FIELDS}, SCC_FIELDS, kind, kind)
        problems += [f"{kind}.{field}: required" for field in SCC_REQUIRED if field not in doc]
        return problems
    model = f"V1{kind}"
    problems += schema_problems(doc, model, kind)
    try:
        obj = ApiClient()._ApiClient__deserialize(doc, model)
    except Exception as exc:  # the client's own validation (required fields, types)
        problems.append(f"{kind}: the kubernetes client refuses it: {type(exc).__name__}: {exc}")
    else:
        if not isinstance(obj, getattr(models, model)):
            problems.append(f"{kind}: deserialized to {type(obj).__name__}")
    return problems


# ------------------------------------------------------------------------------ schema tests
@pytest.mark.parametrize("name,doc", documents(), ids=[n for n, _d in documents()])
def test_document_fits_kubernetes_schema(name, doc):
    assert document_problems(doc) == []


def test_deploy_csi_has_every_object_the_driver_needs():
    kinds = sorted(d["kind"] for d in all_docs())
    for kind in ("CSIDriver", "Deployment", "DaemonSet", "ClusterRole", "ClusterRoleBinding",
                 "Role", "RoleBinding", "StorageClass", "Secret", "PersistentVolumeClaim", "Pod",
                 "SecurityContextConstraints", "Namespace"):
        assert kind in kinds, kind
    assert kinds.count("ServiceAccount") == 2, kinds


def _node_daemonset() -> dict:
    return copy.deepcopy(one("DaemonSet", "s3pyfs-csi-node"))


def test_schema_check_catches_a_misspelt_field():
    ds = _node_daemonset()
    s3pyfs = container(ds["spec"]["template"]["spec"], "s3pyfs")
    mount = next(m for m in s3pyfs["volumeMounts"] if m["name"] == "kubelet-dir")
    mount["mountPropogation"] = mount.pop("mountPropagation")
    problems = document_problems(ds)
    assert problems == ["DaemonSet.spec.template.spec.containers[1].volumeMounts[1].mountPropogation: "
                        "unknown field of V1VolumeMount"]


def test_schema_check_catches_misplaced_wrongly_typed_and_missing_fields():
    ds = _node_daemonset()
    ds["spec"]["hostPID"] = True                           # belongs in the pod spec
    assert document_problems(ds) == ["DaemonSet.spec.hostPID: unknown field of V1DaemonSetSpec"]

    ds = _node_daemonset()
    ds["spec"]["template"]["spec"]["hostNetwork"] = "yes"  # a string where a bool belongs
    problems = document_problems(ds)
    assert problems[0] == "DaemonSet.spec.template.spec.hostNetwork: expected bool, got str 'yes'"
    assert len(problems) == 2 and "refuses it" in problems[1] and "hostNetwork" in problems[1]

    ds = _node_daemonset()
    del container(ds["spec"]["template"]["spec"], "s3pyfs")["name"]   # required
    problems = document_problems(ds)
    assert len(problems) == 1 and "refuses it" in problems[0] and "name" in problems[0], problems

    driver = copy.deepcopy(one("CSIDriver"))
    driver["spec"]["attachRequried"] = False
    assert document_problems(driver) == ["CSIDriver.spec.attachRequried: unknown field of V1CSIDriverSpec"]

    scc = copy.deepcopy(one("SecurityContextConstraints"))
    scc["allowHostPid"] = scc.pop("allowHostPID")
    assert sorted(document_problems(scc)) == [
        "SecurityContextConstraints.allowHostPID: required",
        "SecurityContextConstraints.allowHostPid: unknown field of SecurityContextConstraints"]

    sc = copy.deepcopy(one("StorageClass", "s3pyfs"))
    sc["apiVersion"] = "storage.k8s.io/v1beta1"
    assert document_problems(sc) == [
        "StorageClass: apiVersion 'storage.k8s.io/v1beta1', expected 'storage.k8s.io/v1'"]


# ------------------------------------------------------------------------------ semantics
def test_csidriver_as_kubelet_needs_it():
    driver = one("CSIDriver")
    assert driver["metadata"]["name"] == DRIVER
    spec = driver["spec"]
    assert spec["attachRequired"] is False
    assert spec["podInfoOnMount"] is False
    assert spec["volumeLifecycleModes"] == ["Persistent"]


def test_driver_name_is_the_same_everywhere():
    for sc in of_kind("StorageClass"):
        assert sc["provisioner"] == DRIVER, sc["metadata"]["name"]
    # Any other csi.<name>.io in a value (a socket path, a registration path) is a typo.
    names = {m for value in strings(all_docs()) for m in re.findall(r"csi\.[a-z0-9-]+\.io", value)}
    assert names == {DRIVER}, names


def _volume(pod_spec: dict, name: str) -> dict:
    return next(v for v in pod_spec["volumes"] if v["name"] == name)


def _mount_of(c: dict, path: str) -> dict:
    found = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(found) == 1, f"{c['name']} has no volume at {path}"
    return found[0]


def _args(c: dict) -> dict:
    return dict(a.split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)


def check_s3pyfs_csi_container(pod_spec: dict) -> None:
    """`s3pyfs csi --endpoint unix:///csi/csi.sock --node-id $(NODE_NAME)`, socket dir at /csi."""
    c = container(pod_spec, "s3pyfs")
    assert c["command"] == ["s3pyfs"]
    assert c["args"][:5] == ["csi", "--endpoint", SOCKET, "--node-id", "$(NODE_NAME)"]
    # the node plugin's mounts must outlive its pod: scopes of the host's systemd
    if pod_spec.get("hostPID"):
        assert c["args"][5:] == ["--mounter", "systemd-run"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    _mount_of(c, "/csi")


def test_controller_runs_the_provisioner_against_the_driver_socket():
    deployment = one("Deployment", "s3pyfs-csi-controller")
    pod = deployment["spec"]["template"]["spec"]
    check_s3pyfs_csi_container(pod)
    provisioner = container(pod, "csi-provisioner")
    image, tag = provisioner["image"].rsplit(":", 1)
    assert image == "registry.k8s.io/sig-storage/csi-provisioner"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), tag          # pinned, never latest
    assert _args(provisioner)["--csi-address"] == "/csi/csi.sock"
    # Both containers see the same socket directory.
    socket_volumes = {_mount_of(c, "/csi")["name"] for c in pod["containers"]}
    assert len(socket_volumes) == 1
    assert "emptyDir" in _volume(pod, socket_volumes.pop())
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()


def test_node_plugin_registers_the_socket_kubelet_can_reach():
    ds = one("DaemonSet", "s3pyfs-csi-node")
    pod = ds["spec"]["template"]["spec"]
    check_s3pyfs_csi_container(pod)
    registrar = container(pod, "node-driver-registrar")
    assert re.fullmatch(r"registry\.k8s\.io/sig-storage/csi-node-driver-registrar:v\d+\.\d+\.\d+",
                        registrar["image"])
    args = _args(registrar)
    assert args["--csi-address"] == "/csi/csi.sock"
    # The socket the driver serves at /csi/csi.sock is this host path, which kubelet dials.
    plugin_volume = _mount_of(container(pod, "s3pyfs"), "/csi")["name"]
    assert _mount_of(registrar, "/csi")["name"] == plugin_volume
    plugin_dir = _volume(pod, plugin_volume)["hostPath"]["path"]
    assert plugin_dir == f"/var/lib/kubelet/plugins/{DRIVER}"
    assert args["--kubelet-registration-path"] == f"{plugin_dir}/csi.sock"
    registration = _volume(pod, _mount_of(registrar, "/registration")["name"])
    assert registration["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_node_plugin_mounts_into_kubelets_directory_and_keeps_mounts_outside_the_pod():
    pod = one("DaemonSet", "s3pyfs-csi-node")["spec"]["template"]["spec"]
    s3pyfs = container(pod, "s3pyfs")
    assert s3pyfs["securityContext"]["privileged"] is True       # FUSE + Bidirectional need it
    kubelet = _mount_of(s3pyfs, "/var/lib/kubelet")
    assert kubelet["mountPropagation"] == "Bidirectional"
    assert _volume(pod, kubelet["name"])["hostPath"]["path"] == "/var/lib/kubelet"
    fuse = _volume(pod, _mount_of(s3pyfs, "/dev/fuse")["name"])["hostPath"]
    assert fuse == {"path": "/dev/fuse", "type": "CharDevice"}
    # Bidirectional is allowed only in privileged containers; the registrar has no mount of it.
    for c in pod["containers"]:
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert c.get("securityContext", {}).get("privileged") is True, c["name"]
    # s3pyfs processes outlive the pod: host PID and network namespaces, systemd reachable.
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert _volume(pod, _mount_of(s3pyfs, "/run/systemd")["name"])["hostPath"]["path"] == "/run/systemd"
    # The driver's state (mount records, staging data, journal) is on the host, not in the pod.
    state = _volume(pod, _mount_of(s3pyfs, "/var/lib/s3pyfs-csi")["name"])["hostPath"]
    assert state["path"] == "/var/lib/s3pyfs-csi"
    # No preStop hook that would unmount volumes in use when the driver pod is replaced.
    assert "lifecycle" not in s3pyfs


def test_no_staging_paths():
    """NodeStageVolume is not used: nothing refers to kubelet's staging directories."""
    values = [v.lower() for v in strings(all_docs())]
    for word in ("globalmount", "staging", "stage", "/plugins/kubernetes.io/csi/pv"):
        assert not [v for v in values if word in v], word


STORAGECLASS_SECRETS = ("provisioner", "node-publish")


def test_storageclasses_name_secrets_that_exist_with_the_driver_keys():
    secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in of_kind("Secret")}
    for sc in of_kind("StorageClass"):
        params = sc["parameters"]
        for which in STORAGECLASS_SECRETS:
            key = (params[f"csi.storage.k8s.io/{which}-secret-namespace"],
                   params[f"csi.storage.k8s.io/{which}-secret-name"])
            assert key in secrets, f"{sc['metadata']['name']}: {which} secret {key} not in deploy/csi"
            data = secrets[key]["stringData"]
            assert {"accessKeyID", "secretAccessKey", "endpoint"} <= data.keys() <= \
                {"accessKeyID", "secretAccessKey", "endpoint", "region"}
            assert data["endpoint"].startswith(("http://", "https://"))
            # Placeholders, never keys.
            assert data["accessKeyID"].startswith("REPLACE") and data["secretAccessKey"].startswith("REPLACE")
        # Only the parameters the driver knows, plus the sidecar's csi.storage.k8s.io/ ones.
        assert {k for k in params if not k.startswith("csi.storage.k8s.io/")} <= {"bucket", "options", "pathStyle"}
    assert "bucket" in one("StorageClass", "s3pyfs")["parameters"]
    assert "bucket" not in one("StorageClass", "s3pyfs-bucket")["parameters"]


def test_storageclass_options_are_s3pyfs_options(tmp_path):
    """The class's `options` are -o options s3pyfs's own parser accepts."""
    from s3pyfs.cli import parse_args
    for sc in of_kind("StorageClass"):
        options = sc["parameters"].get("options")
        if options:
            parse_args(["bucket", str(tmp_path), "-o", options])   # raises on an unknown option


def test_example_claim_and_pod_use_the_class():
    classes = {sc["metadata"]["name"] for sc in of_kind("StorageClass")}
    pvc = one("PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] in classes
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = one("Pod")
    assert pod["metadata"]["namespace"] == pvc["metadata"]["namespace"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]


def _service_account(pod_owner: dict) -> tuple[str, str]:
    return pod_owner["metadata"]["namespace"], pod_owner["spec"]["template"]["spec"]["serviceAccountName"]


def test_rbac_lets_the_provisioner_do_its_work():
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in of_kind("ServiceAccount")}
    controller = _service_account(one("Deployment", "s3pyfs-csi-controller"))
    node = _service_account(one("DaemonSet", "s3pyfs-csi-node"))
    assert controller in accounts and node in accounts
    namespaces = {n["metadata"]["name"] for n in of_kind("Namespace")}
    assert {ns for ns, _ in accounts} <= namespaces

    def granted(rules):
        out = set()
        for rule in rules:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out |= {(group, resource, verb) for verb in rule["verbs"]}
        return out

    binding = one("ClusterRoleBinding")
    assert {"kind": "ServiceAccount", "namespace": controller[0], "name": controller[1]} in binding["subjects"]
    role = one("ClusterRole", binding["roleRef"]["name"])
    assert binding["roleRef"]["kind"] == "ClusterRole"
    rules = granted(role["rules"])
    needed = {("", "persistentvolumes", v) for v in ("get", "list", "watch", "create", "delete")}
    needed |= {("", "persistentvolumeclaims", v) for v in ("get", "list", "watch", "update")}
    needed |= {("storage.k8s.io", "storageclasses", v) for v in ("get", "list", "watch")}
    needed |= {("", "events", "create"), ("", "secrets", "get")}
    assert needed <= rules, needed - rules

    # Leader election: Leases in the controller's namespace.
    role_binding = one("RoleBinding")
    assert role_binding["metadata"]["namespace"] == controller[0]
    assert {"kind": "ServiceAccount", "namespace": controller[0], "name": controller[1]} in role_binding["subjects"]
    lease_rules = granted(one("Role", role_binding["roleRef"]["name"])["rules"])
    assert {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")} <= lease_rules


def test_openshift_scc_admits_the_node_plugin_and_what_it_uses():
    scc = one("SecurityContextConstraints")
    namespace, account = _service_account(one("DaemonSet", "s3pyfs-csi-node"))
    assert scc["users"] == [f"system:serviceaccount:{namespace}:{account}"]
    pod = one("DaemonSet", "s3pyfs-csi-node")["spec"]["template"]["spec"]
    assert scc["allowPrivilegedContainer"] and scc["allowHostDirVolumePlugin"]
    assert scc["allowHostPID"] == pod["hostPID"] and scc["allowHostNetwork"] == pod["hostNetwork"]
    kinds = {next(k for k in v if k != "name") for v in pod["volumes"]}
    assert kinds <= set(scc["volumes"]), kinds
