#!/usr/bin/env python3
"""Validates what deploy/ ships, without a cluster.

- Kubernetes manifests — the base and every overlay, patches applied — against the API schemas of
  several Kubernetes versions (the kubernetes-validate package carries them), strictly: an
  unknown or misspelt field fails.
- The Prometheus Operator and cert-manager resources (CRDs, no schema in that package)
  structurally: each scheduler pod has a certificate naming its Raft node, the workers get theirs
  from the CSI driver naming their pod.
- The promises the manifests make to each other: the worker's termination grace covers its
  preStop and drain, its CPU request equals its slots, the StatefulSet has one replica per
  Raft peer and its peers are the pods' stable names.
- compose.yaml: three schedulers whose peer lists agree, workers that know all three, every one
  of them with its own certificate.
- systemd units with `systemd-analyze verify`, where systemd is installed.
Exits non-zero on the first kind of failure, printing every problem found.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
K8S = os.path.join(ROOT, "deploy", "k8s")
VERSIONS = ["1.30", "1.37"]
problems = []


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def seconds(text):
    m = re.fullmatch(r"(\d+)\s*(s|m)?", str(text))
    if not m:
        raise ValueError(f"not a duration: {text}")
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def peer_addresses(toml_list):
    return re.findall(r'address\s*=\s*"([^"]+)"', toml_list)


def merge(base, patch):
    """Strategic merge as kustomize does it for these manifests: maps merge key by key, lists of
    named maps (containers, env, ports, volumes) merge by name, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = [dict(x) for x in base]
        for p in patch:
            i = next((i for i, b in enumerate(out) if b["name"] == p["name"]), None)
            if i is None:
                out.append(p)
            else:
                out[i] = merge(out[i], p)
        return out
    return patch


def render(directory):
    """The resources a kustomization produces (resources, then its patches)."""
    k = docs(os.path.join(directory, "kustomization.yaml"))[0]
    out = []
    for name in k["resources"]:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            out.extend(render(path))
        else:
            out.extend((os.path.relpath(path, K8S), d) for d in docs(path))
    for patch in k.get("patches", []):
        for p in docs(os.path.join(directory, patch["path"])):
            hits = [i for i, (_, d) in enumerate(out) if (d["kind"], d["metadata"]["name"]) == (p["kind"], p["metadata"]["name"])]
            if not hits:
                problems.append(f"{directory}: patch {patch['path']} matches no resource")
            for i in hits:
                out[i] = (out[i][0] + " + " + patch["path"], merge(out[i][1], p))
    return out


def check(variant, resources):
    for name, d in resources:
        kind = f'{d["apiVersion"]}/{d["kind"]}'
        if d["kind"] == "PrometheusRule":
            groups = d.get("spec", {}).get("groups") or []
            rules = [r for g in groups for r in g.get("rules") or []]
            if not groups or not all(g.get("name") for g in groups) or not rules:
                problems.append(f"{variant} {name}: {kind} needs named groups with rules")
            for r in rules:
                if not r.get("expr") or not (r.get("alert") or r.get("record")):
                    problems.append(f"{variant} {name}: {kind} rule {r} needs expr and alert or record")
            continue
        if d["apiVersion"].startswith("cert-manager.io/"):
            spec = d.get("spec", {})
            if d["kind"] == "Certificate" and not (spec.get("secretName") and spec.get("issuerRef", {}).get("name")):
                problems.append(f"{variant} {name}: {kind} {d['metadata']['name']} needs secretName and issuerRef")
            if d["kind"] == "Issuer" and not (spec.get("selfSigned") is not None or spec.get("ca")):
                problems.append(f"{variant} {name}: {kind} {d['metadata']['name']} needs selfSigned or ca")
            continue
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            spec = d.get("spec", {})
            endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints")
            if not spec.get("selector") or not endpoints or not all("port" in e for e in endpoints):
                problems.append(f"{variant} {name}: {kind} needs spec.selector and endpoints with a port")
            continue
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{variant} {name}: {kind} {d['metadata']['name']} against {version}: {e.message} at {list(e.path)}")

    by_kind = {(d["kind"], d["metadata"]["name"]): d for _, d in resources}
    worker = by_kind[("Deployment", "kiln-worker")]["spec"]["template"]["spec"]
    wc = worker["containers"][0]
    wenv = env_of(wc)
    pre_stop = wc.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = seconds(wenv["KILN_WORKER__DRAIN_GRACE"])
    if worker["terminationGracePeriodSeconds"] < pre_stop + drain + 10:
        problems.append(f"{variant} worker: terminationGracePeriodSeconds {worker['terminationGracePeriodSeconds']} < preStop {pre_stop} + drain {drain} + 10")
    if str(wc["resources"]["requests"]["cpu"]) != wenv["KILN_WORKER__SLOTS"]:
        problems.append(f"{variant} worker: the CPU request must equal KILN_WORKER__SLOTS (one core per slot)")

    sts = by_kind[("StatefulSet", "kiln-scheduler")]
    sc = sts["spec"]["template"]["spec"]["containers"][0]
    senv = env_of(sc)
    peers = peer_addresses(senv["KILN_SCHEDULER__PEERS"])
    if len(peers) != sts["spec"]["replicas"]:
        problems.append(f"{variant} scheduler: {sts['spec']['replicas']} replicas but {len(peers)} peers")
    service = sts["spec"]["serviceName"]
    expected = [f"https://kiln-scheduler-{i}.{service}:7450" for i in range(sts["spec"]["replicas"])]
    if peers != expected:
        problems.append(f"{variant} scheduler: peers {peers} are not the pods' stable names over TLS {expected}")
    # Each pod's node certificate names the Raft node its address makes it.
    for i in range(sts["spec"]["replicas"]):
        cert = by_kind.get(("Certificate", f"kiln-scheduler-{i}"), {}).get("spec", {})
        if cert.get("uris") != [f"spiffe://kiln/node/{i + 1}"] or "scheduler.kiln" not in cert.get("dnsNames", []):
            problems.append(f"{variant} scheduler: kiln-scheduler-{i} needs a Certificate for spiffe://kiln/node/{i + 1} and scheduler.kiln")
    if "$(POD_NAME).pem" not in (senv.get("KILN_SCHEDULER__TLS") or ""):
        problems.append(f"{variant} scheduler: KILN_SCHEDULER__TLS must use the pod's own certificate")
    csi = [v.get("csi", {}) for v in worker.get("volumes", []) if v.get("csi")]
    if not any(c.get("volumeAttributes", {}).get("csi.cert-manager.io/uri-sans") == "spiffe://kiln/worker/${POD_NAME}" for c in csi):
        problems.append(f"{variant} worker: needs a per-pod certificate naming spiffe://kiln/worker/${{POD_NAME}}")
    if "https://" not in (wenv.get("KILN_WORKER__SCHEDULERS") or "") or not wenv.get("KILN_WORKER__TLS"):
        problems.append(f"{variant} worker: must reach the schedulers over TLS")
    if senv.get("KILN_SCHEDULER__NODE_ID") != "0" or "$(POD_NAME)" not in senv.get("KILN_SCHEDULER__ADVERTISE", ""):
        problems.append(f"{variant} scheduler: node_id must be 0 (taken from peers) and advertise the pod name")
    if sts["spec"].get("podManagementPolicy") != "Parallel":
        problems.append(f"{variant} scheduler: podManagementPolicy must be Parallel (one pod alone never becomes ready)")
    return len(resources)


variants = {"base": K8S}
overlays = os.path.join(K8S, "overlays")
for o in sorted(os.listdir(overlays)) if os.path.isdir(overlays) else []:
    variants[f"overlay {o}"] = os.path.join(overlays, o)
counted = {v: check(v, render(d)) for v, d in variants.items()}

compose = docs(os.path.join(ROOT, "deploy", "compose.yaml"))[0]
services = compose["services"]
schedulers = sorted(s for s in services if s.startswith("scheduler-"))
if len(schedulers) != 3:
    problems.append(f"compose: expected three schedulers, found {schedulers}")
peer_lists = {s: peer_addresses(services[s]["environment"]["KILN_SCHEDULER__PEERS"]) for s in schedulers}
for s, p in peer_lists.items():
    if p != [f"https://{x}:7450" for x in schedulers]:
        problems.append(f"compose: {s} lists peers {p}")
    if services[s]["environment"]["KILN_SCHEDULER__ADVERTISE"] != f"https://{s}:7450":
        problems.append(f"compose: {s} advertises the wrong address")
    node = s.split("-")[1]
    if f"node-{node}.pem" not in services[s]["environment"].get("KILN_SCHEDULER__TLS", ""):
        problems.append(f"compose: {s} does not present node-{node}'s certificate")
for s in (s for s in services if s.startswith("worker-")):
    listed = re.findall(r"https://(scheduler-\d):7450", services[s]["environment"]["KILN_WORKER__SCHEDULERS"])
    if sorted(listed) != schedulers:
        problems.append(f"compose: {s} knows schedulers {listed}")
    if f"{s}.pem" not in services[s]["environment"].get("KILN_WORKER__TLS", ""):
        problems.append(f"compose: {s} does not present its own certificate")
if "--if-missing" not in services.get("tls-init", {}).get("command", []):
    problems.append("compose: tls-init must write the certificates once (--if-missing)")

if shutil.which("systemd-analyze"):
    with tempfile.TemporaryDirectory() as tmp:
        units = []
        for unit in ("kiln-scheduler.service", "kiln-worker.service"):
            with open(os.path.join(ROOT, "deploy", "systemd", unit)) as f:
                text = f.read().replace("/usr/local/bin/kiln", shutil.which("true"))
            path = os.path.join(tmp, unit)
            with open(path, "w") as f:
                f.write(text)
            units.append(path)
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True)
        noise = ("Failed to", "Cannot", "kiln.service")  # no running systemd in a container
        lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and not l.startswith(noise)]
        if lines:
            problems.append("systemd units: " + "; ".join(lines))
else:
    print("systemd-analyze not installed: units not verified")

for p in problems:
    print("FAIL", p)
if problems:
    sys.exit(1)
summary = ", ".join(f"{v}: {n} resources" for v, n in counted.items())
print(f"deploy manifests valid (Kubernetes {summary}, against {', '.join(VERSIONS)}; compose; systemd)")
