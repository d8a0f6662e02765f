"""Vendor KubeRay's CRDs for tests/test_cluster_configs.py: the served v1 schema of each, descriptions out.

    python cluster/crds/vendor.py /path/to/kuberay [--ref v1.7.0]

reads helm-chart/kuberay-operator/crds/ray.io_{rayclusters,rayjobs,rayservices}.yaml at REF of a
kuberay clone (https://github.com/ray-project/kuberay) with `git show`, so the clone's checkout does
not matter, and writes cluster/crds/ray.io_*.yaml: CustomResourceDefinitions cut down to what
validating a manifest offline needs (not for installing: the operator's Helm chart brings the full ones):
- the v1 version alone (v1alpha1 is deprecated; our manifests say apiVersion ray.io/v1);
- no `description` (most of the bytes: Kubernetes' PodSpec docs, repeated in every pod template);
- no `status` subtree (the operator writes it, a manifest never does) and no printer columns;
- each repeated subschema (Kubernetes' Container, PodTemplateSpec... appear many times) written once
  as a YAML anchor named after the field where it first appears, and aliased after that.
Everything that validates (types, required, enum, pattern, int-or-string, list types, CEL rules) is
kept: loading an output gives back exactly the trimmed schema (checked before writing).
To move to another KubeRay release: change KUBERAY_VERSION, re-run, and run tests/test_cluster_configs.py
(it reads the version from the files' headers and checks it against KUBERAY_VERSION here).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import yaml

KUBERAY_VERSION = "v1.7.0"
CRDS = ("rayclusters", "rayjobs", "rayservices")
SRC = "helm-chart/kuberay-operator/crds/ray.io_{}.yaml"
OUT = Path(__file__).resolve().parent


def strip_descriptions(schema):
    """Drop the `description` keyword everywhere, but not a property that happens to be named so."""
    if isinstance(schema, list):
        return [strip_descriptions(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":  # names of fields, each mapping to a schema
            out[key] = {name: strip_descriptions(s) for name, s in value.items()}
        else:
            out[key] = strip_descriptions(value)
    return out


def share_repeats(node, seen: dict, names: dict, path: str = "schema", fields: bool = False):
    """Make equal subtrees of some size one object, so that the YAML dumper writes an anchor and aliases.
    fields: node is a `properties` mapping (keys are field names, not keywords). names: id(shared
    object) -> its anchor name, the path of keywords below the field where it first appears."""
    if isinstance(node, list):
        return [share_repeats(v, seen, names, path) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: share_repeats(v, seen, names, k if fields else path if k == "properties" else f"{path}.{k}",
                             fields=not fields and k == "properties")
            for k, v in node.items()}
    key = json.dumps(node, sort_keys=True)
    if len(key) < 200:  # an alias for `{type: string}` would cost more than it saves
        return node
    if key not in seen:
        seen[key] = node
        names[id(node)] = path
    return seen[key]


class _Dumper(yaml.SafeDumper):
    """Names each anchor after the field where its schema first appears (&containers_items, not &id007)."""

    anchor_names: dict = {}

    def generate_anchor(self, node):
        oid = next(i for i, n in self.represented_objects.items() if n is node)
        name = base = re.sub(r"[^A-Za-z0-9_-]", "_", self.anchor_names[oid])
        n = 1
        while name in self.taken:
            n += 1
            name = f"{base}{n}"
        self.taken.add(name)
        return name


def dump(doc: dict) -> str:
    names: dict = {}
    shared = share_repeats(doc, {}, names)
    dumper = type("Dumper", (_Dumper,), {"anchor_names": names, "taken": set()})
    return yaml.dump(shared, Dumper=dumper, sort_keys=False, width=120)


def trim(crd: dict) -> dict:
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"], "ray.io/v1 is no longer the served storage version"
    schema = strip_descriptions(v1["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    return {
        "apiVersion": crd["apiVersion"],
        "kind": crd["kind"],
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": {
            "group": crd["spec"]["group"],
            "names": crd["spec"]["names"],
            "scope": crd["spec"]["scope"],
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kuberay", help="a clone of github.com/ray-project/kuberay (any checkout)")
    ap.add_argument("--ref", default=KUBERAY_VERSION)
    args = ap.parse_args()
    git = ["git", "-C", args.kuberay]
    commit = subprocess.run([*git, "rev-parse", f"{args.ref}^{{commit}}"], check=True, capture_output=True,
                            text=True).stdout.strip()
    for name in CRDS:
        text = subprocess.run([*git, "show", f"{commit}:{SRC.format(name)}"], check=True, capture_output=True,
                              text=True).stdout
        crd = trim(yaml.safe_load(text))
        body = dump(crd)
        assert yaml.safe_load(body) == crd, "the anchored YAML does not load back to the trimmed CRD"
        header = (f"# Generated by cluster/crds/vendor.py from github.com/ray-project/kuberay {args.ref}\n"
                  f"# (commit {commit}), {SRC.format(name)}:\n"
                  "# the v1 schema, descriptions and status removed. Do not edit: re-run vendor.py.\n")
        path = OUT / f"ray.io_{name}.yaml"
        path.write_text(header + body)
        print(f"{path.name}: {len(text):,} -> {len(header) + len(body):,} bytes")


if __name__ == "__main__":
    main()
