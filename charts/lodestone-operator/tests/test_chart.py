"""Chart, CRD and manifest tests.

Renders charts/lodestone-operator with the real Helm engine (helm-python-sdk, Helm v4 SDK),
runs Helm's lint, validates every rendered object against the Kubernetes OpenAPI schemas in
strict mode (kubernetes-validate), checks the chart's CRDs against crds/, checks deploy/ is
the current rendering, and validates the samples in deploy/samples against the CRD schemas.

Run: python -m unittest discover -s charts/lodestone-operator/tests -v
Set UPDATE_EXPECT=1 to rewrite deploy/lodestone-operator.yaml.
"""

import copy
import json
import os
import pathlib
import re
import unittest

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

CHART = pathlib.Path(__file__).resolve().parents[1]
ROOT = CHART.parents[1]
KUBE_VERSION = "1.33.0"  # the oldest API the operator is built against (k8s-openapi v1_33)
RELEASE = "lodestone-operator"
NAMESPACE = "lodestone-system"

NON_DEFAULT = {
    "replicaCount": 2,
    "image": {"repository": "registry.example.com/lodestone-operator", "tag": "9.9.9", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watchNamespace": "databases",
    "logFormat": "text",
    "logLevel": "debug",
    "serviceAccount": {"create": True, "name": "custom-sa", "annotations": {"example.com/role": "x"}},
    "podAnnotations": {"example.com/scrape": "true"},
    "podLabels": {"team": "storage"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "priorityClassName": "system-cluster-critical",
    "metrics": {"port": 9090, "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}},
}


def render(values=None, name=RELEASE, namespace=NAMESPACE):
    """Renders the chart and returns its objects (CRDs excluded: they live in crds/)."""
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def validate_strict(testcase, obj):
    """Validates a built-in object against the Kubernetes schema, strict (no unknown fields)."""
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        testcase.fail(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {list(err.path)}")


def crd_files(directory):
    return sorted(p for p in directory.glob("*.yaml"))


def crd_schema(kind):
    for path in crd_files(ROOT / "crds"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise AssertionError(f"no CRD for {kind}")


def deploy_rendering():
    """The plain install manifest: a Namespace, the CRDs, then the chart with default values."""
    parts = [
        "# Generated from charts/lodestone-operator with default values; do not edit.\n"
        "# Regenerate: UPDATE_EXPECT=1 python -m unittest discover -s charts/lodestone-operator/tests\n"
        "# Install: kubectl apply --server-side -f deploy/lodestone-operator.yaml\n",
        yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, sort_keys=False),
    ]
    for path in crd_files(CHART / "crds"):
        parts.append(path.read_text())
    for obj in render():
        parts.append(yaml.safe_dump(obj, sort_keys=False))
    return "---\n".join(parts)


class ChartMetadata(unittest.TestCase):
    def test_versions_match_the_workspace(self):
        cargo = (ROOT / "Cargo.toml").read_text()
        workspace_version = re.search(r'\[workspace\.package\][^\[]*?version = "([^"]+)"', cargo, re.S).group(1)
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(chart["version"], workspace_version)
        self.assertEqual(chart["appVersion"], workspace_version)

    def test_chart_crds_are_the_generated_crds(self):
        generated = {p.name: p.read_text() for p in crd_files(ROOT / "crds")}
        shipped = {p.name: p.read_text() for p in crd_files(CHART / "crds")}
        self.assertEqual(len(generated), 2, generated.keys())
        self.assertEqual(shipped, generated, "copy crds/*.yaml into charts/lodestone-operator/crds/")

    def test_helm_loads_the_crds(self):
        chart = helm.Chart.load(str(CHART))
        names = sorted(yaml.safe_load(c["data"])["metadata"]["name"] for c in chart.crds)
        self.assertEqual(names, ["lodestoneclusters.lodestone.dev", "lodestonesnapshots.lodestone.dev"])


class Lint(unittest.TestCase):
    def lint(self, values):
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        problems = [m for m in report.get("messages") or [] if m["severity"] >= 2]
        self.assertEqual(report.get("errors") or [], [])
        self.assertEqual(problems, [], problems)

    def test_default_values_lint_clean(self):
        self.lint(None)

    def test_non_default_values_lint_clean(self):
        self.lint(NON_DEFAULT)


class Render(unittest.TestCase):
    def test_default_render_validates_and_is_secure(self):
        objects = render()
        kinds = sorted(o["kind"] for o in objects)
        self.assertEqual(kinds, ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding",
                                 "Service", "ServiceAccount"])
        for obj in objects:
            validate_strict(self, obj)
            labels = obj["metadata"]["labels"]
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                        "app.kubernetes.io/managed-by"):
                self.assertIn(key, labels, obj["metadata"]["name"])
        deployment = by_kind(objects, "Deployment")[0]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.assertEqual(container["image"], "ghcr.io/lodestone-dev/lodestone-operator:0.1.0")
        self.assertEqual(container["args"], ["run"])
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["securityContext"].get("runAsUser"), 0)
        self.assertTrue(container["securityContext"]["readOnlyRootFilesystem"])
        self.assertFalse(container["securityContext"]["allowPrivilegeEscalation"])
        self.assertEqual(container["securityContext"]["capabilities"]["drop"], ["ALL"])
        self.assertIn("limits", container["resources"])
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        env = {e["name"]: e for e in container["env"]}
        self.assertEqual(env["LODESTONE_OPERATOR_LEADER_ELECT"]["value"], "true")
        self.assertEqual(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace")
        self.assertNotIn("LODESTONE_OPERATOR_WATCH_NAMESPACE", env)

    def test_non_default_render_validates(self):
        objects = render(NON_DEFAULT)
        for obj in objects:
            if obj["kind"] == "ServiceMonitor":
                continue  # a prometheus-operator kind: checked by hand below
            validate_strict(self, obj)
        deployment = by_kind(objects, "Deployment")[0]
        self.assertEqual(deployment["spec"]["replicas"], 2)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.assertEqual(container["image"], "registry.example.com/lodestone-operator:9.9.9")
        self.assertEqual(pod["serviceAccountName"], "custom-sa")
        self.assertEqual(pod["priorityClassName"], "system-cluster-critical")
        self.assertEqual(pod["tolerations"][0]["key"], "dedicated")
        self.assertEqual(deployment["spec"]["template"]["metadata"]["labels"]["team"], "storage")
        env = {e["name"]: e.get("value") for e in container["env"]}
        self.assertEqual(env["LODESTONE_OPERATOR_WATCH_NAMESPACE"], "databases")
        self.assertEqual(env["LODESTONE_OPERATOR_METRICS_ADDR"], "0.0.0.0:9090")
        self.assertEqual(env["LODESTONE_OPERATOR_LOG_FORMAT"], "text")
        monitor = by_kind(objects, "ServiceMonitor")[0]
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(monitor["spec"]["endpoints"], [{"port": "http", "path": "/metrics", "interval": "15s"}])
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prom")
        service = [s for s in by_kind(objects, "Service")][0]
        self.assertEqual(monitor["spec"]["selector"]["matchLabels"],
                         {k: service["spec"]["selector"][k] for k in monitor["spec"]["selector"]["matchLabels"]})

    def test_rbac_is_least_privilege(self):
        objects = render()
        role = by_kind(objects, "ClusterRole")[0]
        grants = {}
        for rule in role["rules"] + by_kind(objects, "Role")[0]["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                self.assertNotIn("*", rule[field], rule)
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
        # What the controller does, and nothing it does not: the only deletes are a member
        # pod (a rolling restart), a removed member's volume claims and the snapshots a
        # schedule's retention lets go.
        expected = {
            ("lodestone.dev", "lodestoneclusters"): {"get", "list", "watch"},
            ("lodestone.dev", "lodestonesnapshots"): {"get", "list", "watch", "create", "delete"},
            ("batch", "jobs"): {"get", "list", "watch", "create"},
            ("lodestone.dev", "lodestoneclusters/status"): {"get", "patch", "update"},
            ("lodestone.dev", "lodestonesnapshots/status"): {"get", "patch", "update"},
            ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch"},
            ("", "services"): {"get", "list", "watch", "create", "patch"},
            ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
            ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch"},
            ("", "secrets"): {"get"},
            ("", "persistentvolumeclaims"): {"delete"},
            ("", "pods"): {"list", "delete"},
            ("cert-manager.io", "certificates"): {"get", "create", "patch"},
            ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
            ("events.k8s.io", "events"): {"create", "patch"},
            ("coordination.k8s.io", "leases"): {"get", "create", "patch"},
        }
        self.assertEqual(grants, expected)
        self.assertEqual(by_kind(objects, "Role")[0]["metadata"]["namespace"], NAMESPACE)

    def test_switches_remove_objects(self):
        objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"},
                          "leaderElection": {"enabled": False}})
        self.assertEqual(sorted(o["kind"] for o in objects), ["Deployment", "Service"])
        pod = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
        self.assertEqual(pod["serviceAccountName"], "existing")
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        self.assertEqual(env["LODESTONE_OPERATOR_LEADER_ELECT"], "false")

    def test_values_schema_rejects_bad_values(self):
        for bad in ({"replicaCount": 0}, {"replicaCount": "two"}, {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
                    {"logFormat": "xml"}, {"metrics": {"port": 70000}}, {"unknownKey": True}):
            with self.subTest(values=bad), self.assertRaises(helm.HelmError):
                render(bad)


class Manifests(unittest.TestCase):
    def test_deploy_manifest_is_current(self):
        path = ROOT / "deploy" / "lodestone-operator.yaml"
        expected = deploy_rendering()
        if os.environ.get("UPDATE_EXPECT"):
            path.write_text(expected)
        self.assertTrue(path.exists(), "run with UPDATE_EXPECT=1 to create deploy/lodestone-operator.yaml")
        self.assertEqual(path.read_text(), expected,
                         "deploy/lodestone-operator.yaml is stale; rerun with UPDATE_EXPECT=1")

    def test_deploy_manifest_validates(self):
        docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "lodestone-operator.yaml").read_text()) if d]
        kinds = [d["kind"] for d in docs]
        self.assertEqual(kinds[0], "Namespace")
        self.assertEqual(kinds.count("CustomResourceDefinition"), 2)
        for doc in docs:
            validate_strict(self, doc)

    def test_samples_validate_against_the_crd_schemas(self):
        samples = sorted((ROOT / "deploy" / "samples").glob("*.yaml"))
        kinds = []
        for path in samples:
            doc = yaml.safe_load(path.read_text())
            kinds.append(doc["kind"])
            schema = crd_schema(doc["kind"])
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            with self.subTest(sample=path.name):
                jsonschema.validate(body, strict_schema(schema))
                self.assertEqual(doc["apiVersion"], "lodestone.dev/v1alpha1")
        self.assertEqual(kinds.count("LodestoneCluster"), 5)
        self.assertEqual(kinds.count("LodestoneSnapshot"), 1)

    def test_crd_schema_rejects_bad_samples(self):
        doc = yaml.safe_load((ROOT / "deploy" / "samples" / "lodestonecluster-3-members.yaml").read_text())
        schema = strict_schema(crd_schema("LodestoneCluster"))
        for mutate in (lambda d: d["spec"].pop("storage"), lambda d: d["spec"].update(replicas="three"),
                       lambda d: d["spec"].update(typo=1), lambda d: d["spec"]["storage"]["data"].pop("size")):
            broken = copy.deepcopy(doc)
            mutate(broken)
            body = {k: v for k, v in broken.items() if k not in ("apiVersion", "kind", "metadata")}
            with self.assertRaises(jsonschema.ValidationError):
                jsonschema.validate(body, schema)


def strict_schema(schema):
    """The API server prunes unknown fields; for samples an unknown field is a mistake, so
    refuse them (except where the schema preserves unknown fields)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(schema)
    return schema


if __name__ == "__main__":
    unittest.main()
