"""The deployment examples hold together: examples/kubernetes (Dockerfile and
manifests) and examples/systemd (the unit).

No container engine or cluster runs here, so the manifests are checked the way
a cluster would use them: every YAML file parses and names its objects; the
ports of the probes, the containers, the Listener and the Services agree; the
ConfigMap keys the Deployment mounts exist; the two ConfigMaps are laid out in
a temporary folder exactly as the kubelet lays out the pod's projected volume
("..<timestamp>" folder, "..data" symlink, one symlink per top-level entry) and
the real binary validates (-t) and then serves that configuration: probes
answer, the gRPC Mapping routes, a ConfigMap-style "..data" swap reloads it,
SIGTERM exits 0.

Run by ctest as `/usr/bin/python3 -m unittest -v test_deploy_manifests` in
spec/04-integration with NUNCIO_BIN / NUNCIO_SRC (NUNCIO_SANITIZE=1 under ASan) set.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import yaml  # Debian's python3-yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helpers"))

import grpc  # noqa: E402

from nuncio_fixture import (BIN, CALL_TIMEOUT, SETTLE_TIMEOUT, SRC, START_TIMEOUT, STOP_TIMEOUT,  # noqa: E402
                            Upstream, free_port, stubs)

K8S_DIR = os.path.join(SRC, "examples", "kubernetes")
SYSTEMD_UNIT = os.path.join(SRC, "examples", "systemd", "nuncio.service")
DOCKERFILE = os.path.join(K8S_DIR, "Dockerfile")

AMBASSADOR_GROUP = "getambassador.io/"
READY_PATH = "/ambassador/v0/check_ready"
ALIVE_PATH = "/ambassador/v0/check_alive"
DEFAULT_ADMIN_PORT = 8877
DEFAULT_DRAIN_MS = 30000


# --------------------------------------------------------------------------- reading the manifests

def load_manifests():
    """[(file name, object)] for every document of every *.yaml / *.yml in examples/kubernetes."""
    out = []
    for name in sorted(os.listdir(K8S_DIR)):
        if not name.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(K8S_DIR, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    out.append((name, doc))
    return out


def parse_dockerfile(path):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if cur and line.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction
            if line.rstrip().endswith("\\"):
                cur += line.rstrip()[:-1] + " "
                continue
            cur += line
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    if cur.strip():
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(args):
    """ENTRYPOINT/CMD arguments as argv (JSON exec form, else the shell form's words)."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def parse_unit(path):
    """{section: [(key, value)]}: systemd's INI, where keys may repeat."""
    sections, cur = {}, None
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = sections.setdefault(line[1:-1], [])
                continue
            if cur is None or "=" not in line:
                raise ValueError("%s:%d: not a key=value line inside a section: %r" % (path, n, line))
            k, _, v = line.partition("=")
            cur.append((k.strip(), v.strip()))
    return sections


def mount_files(deployment, configmaps):
    """{mountPath: {relative path: text}} for every ConfigMap-backed volume the
    container mounts, as the kubelet would project it."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = {}
    for m in spec["containers"][0].get("volumeMounts", []):
        v = volumes[m["name"]]
        if "configMap" in v:
            sources = [v]
        elif "projected" in v:
            sources = v["projected"]["sources"]
        else:
            continue
        files = {}
        for src in sources:
            cm_ref = src.get("configMap")
            if cm_ref is None:
                continue
            data = configmaps[cm_ref["name"]].get("data") or {}
            items = cm_ref.get("items")
            if items is None:
                items = [{"key": k, "path": k} for k in data]
            for it in items:
                if it["key"] in data:  # a missing key: test_mounted_configmap_keys_exist... says so
                    files[it["path"]] = data[it["key"]]
        out[m["mountPath"]] = files
    return out


def write_volume(root, files, stamp):
    """Writes (or atomically replaces) files the way the kubelet's AtomicWriter
    does: ..<stamp>/<files>, ..data -> ..<stamp> swapped by rename, and a symlink
    <top> -> ..data/<top> for each top-level entry; the old ..<stamp> is removed."""
    os.makedirs(root, exist_ok=True)
    ts = "..%s" % stamp
    for rel, text in files.items():
        p = os.path.join(root, ts, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
    data = os.path.join(root, "..data")
    old = os.readlink(data) if os.path.islink(data) else None
    tmp = os.path.join(root, "..data_tmp")
    os.symlink(ts, tmp)
    os.rename(tmp, data)
    for top in sorted({rel.split("/")[0] for rel in files}):
        link = os.path.join(root, top)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..data", top), link)
    if old and old != ts:
        shutil.rmtree(os.path.join(root, old))


def resolve_port(container, port):
    """A probe's or Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError("port %r is neither a number nor the name of a port of container %s"
                         % (port, container.get("name")))


# --------------------------------------------------------------------------- the tests

class DeployManifestsTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.objects = load_manifests()
        cls.docker = parse_dockerfile(DOCKERFILE)

    # -- helpers over the parsed objects

    def of_kind(self, kind):
        return [o for _, o in self.objects if isinstance(o, dict) and o.get("kind") == kind]

    def deployment(self):
        deps = self.of_kind("Deployment")
        self.assertEqual(len(deps), 1, "examples/kubernetes must hold exactly one Deployment")
        return deps[0]

    def container(self):
        containers = self.deployment()["spec"]["template"]["spec"]["containers"]
        self.assertEqual(len(containers), 1, "the nuncio pod has one container")
        return containers[0]

    def configmaps(self):
        return {c["metadata"]["name"]: c for c in self.of_kind("ConfigMap")}

    def pod_files(self):
        return mount_files(self.deployment(), self.configmaps())

    def pod_file(self, path):
        """The text the pod sees at an absolute path, or None."""
        for mount, files in self.pod_files().items():
            if path.startswith(mount.rstrip("/") + "/"):
                return files.get(path[len(mount.rstrip("/")) + 1:])
        return None

    def pod_files_under(self, folder):
        """{pod path: text} of the *.yaml / *.yml files at or under a pod path."""
        out = {}
        for mount, files in self.pod_files().items():
            for rel, text in files.items():
                p = mount.rstrip("/") + "/" + rel
                if (p == folder or p.startswith(folder.rstrip("/") + "/")) and p.endswith((".yaml", ".yml")):
                    out[p] = text
        return out

    def entrypoint(self):
        """The container's argv: its command, else the image's ENTRYPOINT, then its args."""
        c = self.container()
        if "command" in c:
            argv = list(c["command"])
        else:
            eps = [a for k, a in self.docker if k == "ENTRYPOINT"]
            self.assertTrue(eps, "the Dockerfile has no ENTRYPOINT")
            argv = exec_form(eps[-1])
        return argv + list(c.get("args", []))

    def config_path(self):
        argv = self.entrypoint()
        self.assertIn("-c", argv, "nuncio's command line %r has no -c CONFIG" % argv)
        return argv[argv.index("-c") + 1]

    def native_config(self):
        path = self.config_path()
        text = self.pod_file(path)
        self.assertIsNotNone(text, "the pod has no file at %s (the -c path): no ConfigMap key is mounted there"
                             % path)
        cfg = yaml.safe_load(text)
        self.assertIsInstance(cfg, dict, "%s must be a YAML mapping" % path)
        return path, cfg

    def ambassador_paths(self):
        path, cfg = self.native_config()
        base = os.path.dirname(path)
        entries = cfg.get("ambassador") or []
        return [e if e.startswith("/") else os.path.normpath(os.path.join(base, e)) for e in entries]

    def ambassador_docs(self):
        docs = []
        for p in self.ambassador_paths():
            for _, text in sorted(self.pod_files_under(p).items()):
                docs.extend(d for d in yaml.safe_load_all(text) if d is not None)
        return docs

    def listener_ports(self):
        ports = {d["spec"]["port"] for d in self.ambassador_docs()
                 if d.get("kind") == "Listener" and str(d.get("apiVersion", "")).startswith(AMBASSADOR_GROUP)}
        self.assertTrue(ports, "the Ambassador YAML in the ConfigMap has no Listener")
        return ports

    def admin(self):
        _, cfg = self.native_config()
        a = cfg.get("admin")
        self.assertIsInstance(a, dict, "nuncio.yaml must configure admin: {address, port}")
        return a.get("address", "127.0.0.1"), a.get("port", DEFAULT_ADMIN_PORT)

    def services(self):
        return self.of_kind("Service")

    # -- every object

    def test_every_file_parses_and_every_object_is_named(self):
        files = sorted(n for n in os.listdir(K8S_DIR) if n.endswith((".yaml", ".yml")))
        self.assertTrue({"configmap.yaml", "deployment.yaml", "service.yaml"} <= set(files), files)
        self.assertTrue(self.objects, "no object in examples/kubernetes/*.yaml")
        seen = set()
        for name, o in self.objects:
            self.assertIsInstance(o, dict, "%s: a document that is not a mapping" % name)
            for key in ("apiVersion", "kind"):
                self.assertIsInstance(o.get(key), str, "%s: an object without %s" % (name, key))
                self.assertTrue(o[key], "%s: empty %s" % (name, key))
            meta = o.get("metadata")
            self.assertIsInstance(meta, dict, "%s: %s without metadata" % (name, o["kind"]))
            self.assertIsInstance(meta.get("name"), str, "%s: %s without metadata.name" % (name, o["kind"]))
            self.assertRegex(meta["name"], r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                             "%s: %s name is not a DNS label" % (name, o["kind"]))
            self.assertNotIn((o["kind"], meta["name"]), seen, "%s: %s/%s defined twice"
                             % (name, o["kind"], meta["name"]))
            seen.add((o["kind"], meta["name"]))
        kinds = sorted(k for k, _ in seen)
        self.assertEqual(kinds.count("Deployment"), 1, kinds)
        self.assertGreaterEqual(kinds.count("ConfigMap"), 2, kinds)
        self.assertGreaterEqual(kinds.count("Service"), 2, kinds)
        for kind, api in (("Deployment", "apps/v1"), ("ConfigMap", "v1"), ("Service", "v1")):
            for o in self.of_kind(kind):
                self.assertEqual(o["apiVersion"], api, "%s/%s" % (kind, o["metadata"]["name"]))

    # -- ConfigMaps and the volumes that mount them

    def test_mounted_configmap_keys_exist_and_every_key_is_mounted(self):
        spec = self.deployment()["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        cms = self.configmaps()
        mounted = {}  # configmap name -> set of keys
        for m in self.container().get("volumeMounts", []):
            self.assertIn(m["name"], volumes, "volumeMount %s names no volume" % m["name"])
            v = volumes[m["name"]]
            sources = [v] if "configMap" in v else v.get("projected", {}).get("sources", [])
            for src in sources:
                ref = src.get("configMap")
                if ref is None:
                    continue
                self.assertIn(ref["name"], cms, "volume %s mounts ConfigMap %s, which no manifest defines"
                              % (m["name"], ref["name"]))
                self.assertFalse(ref.get("optional", False), "ConfigMap %s must not be optional" % ref["name"])
                data = cms[ref["name"]].get("data") or {}
                keys = [it["key"] for it in ref["items"]] if "items" in ref else list(data)
                for k in keys:
                    self.assertIn(k, data, "volume %s mounts key %s, which ConfigMap %s does not have"
                                  % (m["name"], k, ref["name"]))
                mounted.setdefault(ref["name"], set()).update(keys)
        self.assertTrue(mounted, "the container mounts no ConfigMap")
        for name, cm in cms.items():
            self.assertIn(name, mounted, "ConfigMap %s is mounted nowhere" % name)
            missing = set(cm.get("data") or {}) - mounted[name]
            self.assertFalse(missing, "keys of ConfigMap %s that the Deployment does not mount (add them to "
                             "the projected volume's items): %s" % (name, sorted(missing)))
        for m in self.container().get("volumeMounts", []):
            v = volumes[m["name"]]
            if "configMap" in v or "projected" in v:
                self.assertNotIn("subPath", m, "a subPath mount never receives ConfigMap updates (%s)" % m["name"])

    def test_native_config_is_for_a_pod(self):
        path, cfg = self.native_config()
        self.assertEqual(path, "/etc/nuncio/nuncio.yaml")
        self.assertEqual(cfg.get("workers"), "auto", "workers: auto (one worker per CPU of the pod)")
        address, port = self.admin()
        self.assertEqual(address, "0.0.0.0", "the kubelet's probes reach the pod's IP, not its loopback")
        self.assertIsInstance(port, int)
        self.assertIn("/etc/nuncio/ambassador", self.ambassador_paths())
        for p in self.ambassador_paths():
            self.assertTrue(self.pod_files_under(p), "ambassador path %s: no YAML file is mounted there" % p)
        kinds = sorted(d.get("kind") for d in self.ambassador_docs())
        for kind in ("Listener", "Host", "Mapping"):
            self.assertIn(kind, kinds)
        for d in self.ambassador_docs():
            self.assertTrue(str(d.get("apiVersion", "")).startswith(AMBASSADOR_GROUP), d)
            self.assertIsInstance((d.get("metadata") or {}).get("name"), str, d)
        grpc_mappings = [d for d in self.ambassador_docs() if d.get("kind") == "Mapping"
                         and d["spec"].get("grpc") is True]
        self.assertTrue(grpc_mappings, "no gRPC Mapping (grpc: true)")
        self.assertTrue(any(re.match(r"^greeter(\.[a-z0-9-]+)*(:\d+)?$", m["spec"]["service"])
                            for m in grpc_mappings), "no gRPC Mapping to the Service greeter")

    # -- the Deployment

    def test_probes_point_at_the_admin(self):
        c = self.container()
        _, admin_port = self.admin()
        for probe, path in (("readinessProbe", READY_PATH), ("livenessProbe", ALIVE_PATH)):
            self.assertIn(probe, c)
            get = c[probe].get("httpGet")
            self.assertIsNotNone(get, "%s must be an httpGet" % probe)
            self.assertEqual(get.get("path"), path, probe)
            self.assertEqual(resolve_port(c, get.get("port")), admin_port,
                             "%s goes to port %r, the admin listens on %d" % (probe, get.get("port"), admin_port))
            self.assertIn(get.get("scheme", "HTTP"), ("HTTP",), "the admin serves cleartext HTTP")

    def test_container_ports_match_the_listeners_and_the_admin(self):
        c = self.container()
        _, admin_port = self.admin()
        declared = {p["containerPort"] for p in c.get("ports", [])}
        self.assertEqual(declared, self.listener_ports() | {admin_port},
                         "containerPorts must be the Listener ports plus the admin port")
        for p in c.get("ports", []):
            self.assertEqual(p.get("protocol", "TCP"), "TCP")

    def test_services_reach_the_listener_and_the_admin(self):
        c = self.container()
        labels = self.deployment()["spec"]["template"]["metadata"]["labels"]
        _, admin_port = self.admin()
        by_type = {}
        for s in self.services():
            spec = s["spec"]
            by_type.setdefault(spec.get("type", "ClusterIP"), []).append(s)
            sel = spec.get("selector") or {}
            self.assertTrue(sel, "Service %s has no selector" % s["metadata"]["name"])
            for k, v in sel.items():
                self.assertEqual(labels.get(k), v, "Service %s selects %s=%s, not a label of the nuncio pods"
                                 % (s["metadata"]["name"], k, v))
        self.assertEqual(len(by_type.get("LoadBalancer", [])), 1, "one Service of type LoadBalancer")
        lb = by_type["LoadBalancer"][0]
        lb_ports = lb["spec"]["ports"]
        self.assertIn(80, [p["port"] for p in lb_ports])
        for p in lb_ports:
            self.assertEqual(p.get("protocol", "TCP"), "TCP", "an L4 (TCP) load balancer")
            target = resolve_port(c, p.get("targetPort", p["port"]))
            self.assertIn(target, self.listener_ports(), "LoadBalancer port %d goes to %d, where no Listener is"
                          % (p["port"], target))
            self.assertNotEqual(target, admin_port, "the admin port must not be public")
        admin_svcs = [s for s in by_type.get("ClusterIP", [])
                      if (s.get("metadata", {}).get("annotations") or {}).get("prometheus.io/scrape") == "true"]
        self.assertEqual(len(admin_svcs), 1, "one ClusterIP Service with prometheus.io/scrape: \"true\"")
        svc = admin_svcs[0]
        ann = svc["metadata"]["annotations"]
        self.assertEqual(ann.get("prometheus.io/port"), str(admin_port))
        self.assertEqual(ann.get("prometheus.io/path"), "/metrics")
        targets = [resolve_port(c, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]]
        self.assertEqual(targets, [admin_port], "the admin Service must reach the admin port only")

    def test_deployment_shape(self):
        d = self.deployment()
        spec = d["spec"]
        self.assertEqual(spec.get("replicas"), 2)
        tmpl = spec["template"]
        for k, v in spec["selector"]["matchLabels"].items():
            self.assertEqual(tmpl["metadata"]["labels"].get(k), v, "selector does not match the pod template")
        pod = tmpl["spec"]
        c = self.container()
        # Graceful drain fits in the grace period: preStop sleep + drain_timeout_ms < grace.
        _, cfg = self.native_config()
        drain_s = cfg.get("drain_timeout_ms", DEFAULT_DRAIN_MS) / 1000.0
        pre = 0
        cmd = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command") or []
        if cmd and os.path.basename(cmd[0]) == "sleep":
            pre = float(cmd[1])
        grace = pod.get("terminationGracePeriodSeconds", 30)
        self.assertEqual(grace, 40)
        self.assertGreater(grace, pre + drain_s, "terminationGracePeriodSeconds (%s) must exceed preStop (%ss) "
                           "+ drain_timeout (%ss)" % (grace, pre, drain_s))
        # Resources.
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                self.assertIn(r, res.get(part) or {}, "resources.%s.%s" % (part, r))
        # Security.
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        self.assertTrue(csc.get("runAsNonRoot", psc.get("runAsNonRoot")), "runAsNonRoot")
        self.assertTrue(csc.get("readOnlyRootFilesystem"), "readOnlyRootFilesystem")
        self.assertFalse(csc.get("allowPrivilegeEscalation", True), "allowPrivilegeEscalation: false")
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if uid is None:  # runAsNonRoot can only be checked against a numeric image USER
            users = [a for k, a in self.docker if k == "USER"]
            uid = users[-1].split(":")[0] if users else "0"
            self.assertTrue(uid.isdigit(), "runAsNonRoot needs runAsUser or a numeric USER in the image")
        self.assertGreater(int(uid), 0)
        image = c.get("image", "")
        self.assertTrue(image.startswith("nuncio"), image)

    # -- the Dockerfile

    def test_dockerfile(self):
        froms = [a.split()[0] for k, a in self.docker if k == "FROM"]
        self.assertTrue(froms, "no FROM")
        for f in froms:
            self.assertEqual(f, "debian:12", "every stage starts FROM debian:12")
        runs = [a for k, a in self.docker if k == "RUN"]
        self.assertTrue(any(re.search(r"\bmake deps\b", r) for r in runs), "the image must run `make deps`")
        self.assertTrue(any(re.search(r"\bmake build\b", r) for r in runs), "the image must run `make build`")
        users = [a for k, a in self.docker if k == "USER"]
        self.assertTrue(users, "no USER: the image would run as root")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("root", "0"))
        exposed = set()
        for k, a in self.docker:
            if k == "EXPOSE":
                exposed.update(int(p.split("/")[0]) for p in a.split())
        self.assertTrue({8080, 8443, 8877} <= exposed, exposed)
        _, admin_port = self.admin()
        self.assertTrue(self.listener_ports() | {admin_port} <= exposed, exposed)
        stops = [a for k, a in self.docker if k == "STOPSIGNAL"]
        self.assertEqual(stops[-1:], ["SIGTERM"])
        eps = [a for k, a in self.docker if k == "ENTRYPOINT"]
        self.assertTrue(eps, "no ENTRYPOINT")
        self.assertTrue(eps[-1].startswith("["), "ENTRYPOINT in exec form, so nuncio is PID 1 and gets SIGTERM")
        argv = exec_form(eps[-1])
        self.assertEqual(os.path.basename(argv[0]), "nuncio")
        self.assertEqual(argv[1:], ["-c", "/etc/nuncio/nuncio.yaml"])
        ignore = os.path.join(K8S_DIR, "Dockerfile.dockerignore")
        self.assertTrue(os.path.isfile(ignore), "examples/kubernetes/Dockerfile.dockerignore")
        with open(ignore) as f:
            patterns = {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
        self.assertIn("build", patterns, "a host build/ folder must stay out of the image's context")

    # -- the real binary on the pod's files

    def lay_out_pod(self, root, listener_ports=None, admin=None, service=None, mapping_prefix=None, stamp="1"):
        """Writes the pod's ConfigMap volumes under root (pod path P -> root+P) as the
        kubelet does, with absolute paths in nuncio.yaml moved under root.
        For a live run: listener_ports {old: new}, admin (address, port), service
        (every Mapping's), mapping_prefix (every Mapping's prefix) replace theirs."""
        files = self.pod_files()
        cfg_path = self.config_path()
        amb_paths = self.ambassador_paths()
        for mount, fs in files.items():
            for rel in list(fs):
                p = mount.rstrip("/") + "/" + rel
                if p == cfg_path:
                    cfg = yaml.safe_load(fs[rel])
                    cfg["ambassador"] = [root + e if e.startswith("/") else e for e in cfg.get("ambassador") or []]
                    cfg["lua_path"] = [root + e if e.startswith("/") else e for e in cfg.get("lua_path") or []]
                    if str(cfg.get("secrets_dir", "")).startswith("/"):
                        cfg["secrets_dir"] = root + cfg["secrets_dir"]
                    if admin:
                        cfg["admin"] = {"address": admin[0], "port": admin[1]}
                    fs[rel] = yaml.safe_dump(cfg, sort_keys=False)
                elif any(p == a or p.startswith(a.rstrip("/") + "/") for a in amb_paths) \
                        and p.endswith((".yaml", ".yml")):
                    docs = [d for d in yaml.safe_load_all(fs[rel]) if d is not None]
                    for d in docs:
                        if d.get("kind") == "Listener" and listener_ports:
                            d["spec"]["port"] = listener_ports[d["spec"]["port"]]
                        if d.get("kind") == "Mapping" and service:
                            d["spec"]["service"] = service
                        if d.get("kind") == "Mapping" and mapping_prefix:
                            d["spec"]["prefix"] = mapping_prefix
                    fs[rel] = yaml.safe_dump_all(docs, sort_keys=False)
            write_volume(root + mount, fs, stamp)
        return root + cfg_path

    def run_nuncio(self, *args, timeout=START_TIMEOUT):
        p = subprocess.run([BIN] + list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        self.assertNotIn("Sanitizer", p.stderr, "sanitizer report:\n" + p.stderr)
        return p

    def test_the_binary_validates_the_pod_configuration(self):
        root = tempfile.mkdtemp(prefix="nuncio-pod-")
        self.addCleanup(shutil.rmtree, root, True)
        conf = self.lay_out_pod(root)
        # The layout is the kubelet's: the config is a symlink through ..data.
        self.assertTrue(os.path.islink(conf), conf)
        self.assertTrue(os.path.islink(os.path.join(os.path.dirname(conf), "..data")))
        p = self.run_nuncio("-t", "-c", conf)
        self.assertEqual(p.returncode, 0, "nuncio -t -c %s (the pod's configuration) failed:\n%s%s"
                         % (conf, p.stdout, p.stderr))
        m = re.search(r"configuration OK \((\d+) listener", p.stdout)
        self.assertIsNotNone(m, p.stdout)
        # Each Listener once: the kubelet's ..data / ..<timestamp> entries are not read again.
        self.assertEqual(int(m.group(1)), len(self.listener_ports()), p.stdout + p.stderr)

    def test_the_pod_configuration_serves_probes_routes_and_reloads(self):
        root = tempfile.mkdtemp(prefix="nuncio-pod-")
        self.addCleanup(shutil.rmtree, root, True)
        upstream = Upstream(workers=4)
        self.addCleanup(upstream.stop)
        log_path = None

        def logtext():
            with open(log_path, errors="replace") as f:
                return "\n---- nuncio log\n" + f.read()

        admin_port = None

        def get(path):
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                return r.status, r.read().decode("utf-8", "replace")
            finally:
                conn.close()

        proc = None

        def kill():
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self.addCleanup(kill)

        for attempt in range(5):  # free ports are racy: retry on new ones when a bind is lost
            ports = {p: free_port() for p in sorted(self.listener_ports())}
            admin_port = free_port()
            layout = dict(listener_ports=ports, admin=("127.0.0.1", admin_port), service=upstream.address)
            conf = self.lay_out_pod(root, stamp="start%d" % attempt, **layout)
            log_path = os.path.join(root, "nuncio-%d.log" % attempt)
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([BIN, "-c", conf], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)
            deadline = time.monotonic() + START_TIMEOUT
            status = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    status, _ = get(READY_PATH)
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            if not (proc.poll() is not None and "cannot listen" in logtext()):
                break
        self.assertIsNone(proc.poll(), "nuncio exited (%s) on the pod's configuration%s"
                          % (proc.returncode, logtext()))
        self.assertEqual(status, 200, "the readiness probe's path did not answer 200%s" % logtext())

        c = self.container()
        for probe in ("readinessProbe", "livenessProbe"):
            path = c[probe]["httpGet"]["path"]
            st, body = get(path)
            self.assertEqual(st, 200, "%s %s -> %d %s%s" % (probe, path, st, body, logtext()))
        metrics = [s["metadata"]["annotations"]["prometheus.io/path"] for s in self.services()
                   if (s["metadata"].get("annotations") or {}).get("prometheus.io/scrape") == "true"]
        for path in metrics:
            st, body = get(path)
            self.assertEqual(st, 200, "Prometheus scrapes %s -> %d%s" % (path, st, logtext()))

        s = stubs()
        listen = ports[min(ports)]
        with grpc.insecure_channel("127.0.0.1:%d" % listen) as ch:
            stub = s.helloworld_pb2_grpc.GreeterStub(ch)
            reply = stub.SayHello(s.helloworld_pb2.HelloRequest(name="pod"), timeout=CALL_TIMEOUT)
            self.assertIn("pod", reply.message)

            # A ConfigMap update: the kubelet writes a new ..<timestamp> folder and
            # renames ..data over the old symlink. nuncio must notice and reload:
            # the Mapping no longer covers SayHello afterwards.
            self.lay_out_pod(root, mapping_prefix="/nothing.Here/", stamp="reload", **layout)
            deadline = time.monotonic() + SETTLE_TIMEOUT
            code = grpc.StatusCode.OK
            while time.monotonic() < deadline:
                try:
                    stub.SayHello(s.helloworld_pb2.HelloRequest(name="pod"), timeout=CALL_TIMEOUT)
                except grpc.RpcError as e:
                    code = e.code()
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        break
                time.sleep(0.1)
            self.assertEqual(code, grpc.StatusCode.UNIMPLEMENTED,
                             "a ConfigMap-style ..data swap was not reloaded within %ss%s"
                             % (SETTLE_TIMEOUT, logtext()))

        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("nuncio did not exit within %ss of SIGTERM%s" % (STOP_TIMEOUT, logtext()))
        self.assertEqual(rc, 0, "SIGTERM must drain and exit 0%s" % logtext())
        self.assertNotIn("Sanitizer", logtext())


class SystemdUnitTest(unittest.TestCase):
    def setUp(self):
        self.unit = parse_unit(SYSTEMD_UNIT)

    def values(self, section, key):
        return [v for k, v in self.unit.get(section, []) if k == key]

    def test_required_sections_and_keys(self):
        for section in ("Unit", "Service", "Install"):
            self.assertIn(section, self.unit)
        self.assertEqual(self.values("Service", "Type"), ["simple"], "nuncio does not speak sd_notify")
        self.assertEqual(self.values("Service", "ExecStart"), ["/usr/local/bin/nuncio -c /etc/nuncio/nuncio.yaml"])
        self.assertIn("/usr/local/bin/nuncio -t -c /etc/nuncio/nuncio.yaml", self.values("Service", "ExecStartPre"))
        reload_ = self.values("Service", "ExecReload")
        self.assertTrue(reload_, "no ExecReload")
        self.assertEqual(reload_[-1], "/bin/kill -HUP $MAINPID")
        self.assertEqual(self.values("Service", "KillSignal"), ["SIGTERM"])
        stop = self.values("Service", "TimeoutStopSec")
        self.assertEqual(len(stop), 1)
        self.assertGreater(float(stop[0].rstrip("s")), DEFAULT_DRAIN_MS / 1000.0, "TimeoutStopSec > drain_timeout")
        self.assertEqual(self.values("Service", "Restart"), ["on-failure"])
        self.assertEqual(self.values("Service", "LimitNOFILE"), ["1048576"])
        self.assertTrue(self.values("Service", "DynamicUser") == ["yes"] or self.values("Service", "User"),
                        "a DynamicUser or a dedicated User")
        for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                          ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
                          ("AmbientCapabilities", "CAP_NET_BIND_SERVICE")):
            self.assertEqual(self.values("Service", key), [want], key)
        self.assertTrue(self.values("Service", "ProtectHome"), "ProtectHome")
        self.assertTrue(any("/etc/nuncio" in v for v in self.values("Service", "ReadOnlyPaths")))
        self.assertNotIn("yes", self.values("Service", "MemoryDenyWriteExecute"), "LuaJIT's JIT needs W+X memory")
        # Where the installed binary finds its Lua modules (README: install step 2).
        env = " ".join(self.values("Service", "Environment"))
        self.assertIn("NUNCIO_LUA_DIR=", env)
        self.assertIn("NUNCIO_FILTERS_DIR=", env)
        self.assertTrue(self.values("Install", "WantedBy"))

    def test_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        if not analyze:
            self.skipTest("systemd-analyze is not installed: only the INI keys were checked")
        d = tempfile.mkdtemp(prefix="nuncio-unit-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(SYSTEMD_UNIT) as f:
            text = f.read()
        self.assertIn("/usr/local/bin/nuncio", text)
        # verify requires the commands to exist: the freshly built binary stands in.
        unit = os.path.join(d, "nuncio.service")
        with open(unit, "w") as f:
            f.write(text.replace("/usr/local/bin/nuncio", os.path.abspath(BIN)))
        p = subprocess.run([analyze, "verify", unit], capture_output=True, text=True, timeout=60, cwd=d)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, "systemd-analyze verify failed:\n" + out)
        # Unknown keys or bad values are only warnings for verify; they are errors here.
        unit_lines = [ln for ln in out.splitlines() if "nuncio.service" in ln]
        self.assertEqual(unit_lines, [], "systemd-analyze verify complained about the unit:\n" + out)


if __name__ == "__main__":
    unittest.main()
