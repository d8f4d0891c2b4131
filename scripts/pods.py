#!/usr/bin/env python3
"""Runs Poplar's image and manifests as a container runtime and a cluster would, without either.

  pods.py image   --layout DIR --dockerfile Dockerfile
  pods.py cluster --layout DIR --rendered OVERLAY.yaml

`image` is `docker run -p 8080:8080 IMAGE` and `curl localhost:8080/hello`: the image's files
(laid out by the Dockerfile's build stage, run as plain shell: scripts/check-deploy.sh) run with
the Dockerfile's ENTRYPOINT, CMD, USER, WORKDIR and ENV in a network namespace of their own;
then its HEALTHCHECK command runs there, and its STOPSIGNAL must stop it with exit 0.

`cluster` is `kubectl apply -k OVERLAY` on a cluster with one node: every pod of the rendered
manifests (StatefulSets, Deployments with all their replicas, Jobs) runs as a process in a
network namespace of its own, on a bridge, as the user its securityContext names, with its env
(Secrets resolved), its ConfigMap volumes written out and its other volumes as empty folders;
Services are names in every pod's /etc/hosts. Then it checks what DEPLOY.md says: every pod
passes its readiness and liveness probes, the Job deploys its task, an edge answers the task
and the origin route, every pod scraped for Prometheus serves metrics, and every pod stops on
SIGTERM with exit 0 inside terminationGracePeriodSeconds.

What a real cluster does that this does not: pulling images (the image's files stand in, and
an image other than Poplar's is replaced by a stand-in named in STAND_INS), kube-proxy (a
Service name is one pod's address, so a Service's port must be its target port), mount
namespaces (a path under a volume's mountPath, or under the image's /usr/share/poplar, in a
container's args or in a config file is rewritten to the folder that stands in for it), the
preStop hook's sleep, resource limits, readOnlyRootFilesystem. Needs root (`ip netns`); every
namespace, /etc/netns entry and process it makes is removed at exit.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PATIENCE = 120.0  # seconds to wait for anything to become true, as the Rust tests do
PREFIX = f"pp{os.getpid()}"
NET = "10.204.0"
IMAGE = "poplar"


def say(*args):
    print("pods:", *args, file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def wait_for(what, check, timeout=PATIENCE):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise Failed(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.2)


class Network:
    """A bridge in a namespace of its own (the node: probes and checks come from there) and a
    namespace per pod, each with a veth to the bridge and an address in NET.0/24."""

    def __init__(self):
        self.namespaces = []
        self.next_host = 2
        self.node = self.add_namespace("node")
        run(["ip", "-n", self.node, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.node, "addr", "add", f"{NET}.1/24", "dev", "br0"])
        run(["ip", "-n", self.node, "link", "set", "br0", "up"])

    def add_namespace(self, name):
        ns = f"{PREFIX}-{name}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def add_host(self, name):
        ns = self.add_namespace(name)
        address = f"{NET}.{self.next_host}"
        self.next_host += 1
        veth = f"v{self.next_host}"
        run(["ip", "-n", self.node, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", ns])
        run(["ip", "-n", self.node, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        return ns, address

    def set_hosts(self, names):
        text = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in sorted(names.items()))
        for ns in self.namespaces:
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            with open(f"/etc/netns/{ns}/hosts", "w") as f:
                f.write(text)

    def remove(self):
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def run(argv, **kw):
    subprocess.run(argv, check=True, **kw)


def http_get(ns, url, timeout=5):
    """GET from inside a namespace: (status, body), or (None, error)."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"  r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
        "  s, b = r.status, r.read()\n"
        "except urllib.error.HTTPError as e:\n"
        "  s, b = e.code, e.read()\n"
        "sys.stdout.write(str(s) + '\\n'); sys.stdout.buffer.write(b)\n"
    )
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url],
                          capture_output=True, timeout=timeout + 10)
    if done.returncode != 0:
        return None, done.stderr.decode(errors="replace").strip().splitlines()[-1:]
    status, _, body = done.stdout.partition(b"\n")
    return int(status), body


class Process:
    def __init__(self, name, ns, argv, env, cwd, user, log):
        self.name = name
        uid, _, gid = str(user).partition(":")
        command = ["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}",
                   f"--regid={gid or uid}", "--clear-groups", "--"] + argv
        self.log = log
        self.proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=open(log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig, grace):
        """Sends `sig`; the exit status, or None if it outlived `grace` seconds (then killed)."""
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return None

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-15:])
        except OSError:
            return ""


def mapped(text, paths):
    """`text` with every path under a key of `paths` (longest first) moved to its folder."""
    keys = "|".join(re.escape(k) for k in sorted(paths, key=len, reverse=True))
    return re.sub(rf"(?<![\w/.-])({keys})(?=/|\s|[\"',}}\]]|$)",
                  lambda m: paths[m.group(1)], text, flags=re.M)


# ---------------------------------------------------------------------------------------------
# docker run


def dockerfile_run_stage(path):
    lines = re.sub(r"\\\n", " ", open(path).read()).splitlines()
    stage = {}
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            stage = {"ENV": {}}
        elif word == "ENV":
            key, _, value = rest.partition("=")
            stage["ENV"][key.strip()] = value.strip()
        elif word in ("ENTRYPOINT", "CMD", "USER", "WORKDIR", "STOPSIGNAL", "HEALTHCHECK"):
            stage[word] = rest.strip()
    return stage


def run_image(args, work, network):
    stage = dockerfile_run_stage(args.dockerfile)
    layout = os.path.abspath(args.layout)
    entrypoint = json.loads(stage["ENTRYPOINT"])
    command = json.loads(stage["CMD"])
    # The image's PATH holds /usr/local/bin: the entrypoint `poplar` is the layout's binary.
    binary = os.path.join(layout, "usr/local/bin", entrypoint[0])
    argv = [binary] + entrypoint[1:] + [mapped(a, {"/etc/poplar": f"{layout}/etc/poplar"})
                                        for a in command]
    home = os.path.join(work, "container-workdir")
    os.makedirs(home)
    uid = stage["USER"].split(":")[0]
    os.chown(home, int(uid), int(uid))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, **stage["ENV"]}
    ns, address = network.add_host("container")
    network.set_hosts({})
    container = Process("container", ns, argv, env, home, stage["USER"], f"{work}/container.log")
    try:
        port = env.get("POPLAR_HEALTH_PORT", "8080")
        status, body = wait_for(
            "the container's /hello",
            lambda: (container.alive() or fail_exit(container))
            and ok(http_get(network.node, f"http://{address}:{port}/hello")))
        say(f"image: GET /hello from the container's port {port}: {status} {body[:60]!r}")
        health = stage["HEALTHCHECK"]
        cmd = json.loads(health[health.index("CMD") + 3:].strip())
        done = subprocess.run(["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}",
                               f"--regid={uid}", "--clear-groups", "--"] + cmd,
                              env=env, cwd=home, timeout=10)
        if done.returncode != 0:
            raise Failed(f"the HEALTHCHECK command exited {done.returncode}")
        say("image: the HEALTHCHECK command passes inside the container's network")
        sig = getattr(signal, stage.get("STOPSIGNAL", "SIGTERM"))
        code = container.stop(sig, 30)
        if code != 0:
            raise Failed(f"the container exited {code} on {stage.get('STOPSIGNAL')}\n"
                         + container.tail())
        say(f"image: {stage.get('STOPSIGNAL')} stopped it with exit 0")
    finally:
        container.stop(signal.SIGKILL, 5)


def ok(answer):
    status, body = answer
    return (status, body) if status == 200 else None


def fail_exit(process):
    raise Failed(f"{process.name} exited {process.proc.returncode}:\n{process.tail()}")


# ---------------------------------------------------------------------------------------------
# kubectl apply -k


# Images other than Poplar's, and what runs in their place: argv given the container's port.
STAND_INS = {
    "nginxinc/nginx-unprivileged": lambda port, root: [
        sys.executable, "-m", "http.server", str(port), "--directory", root],
}


class Cluster:
    def __init__(self, docs, layout, work, network):
        self.docs = docs
        self.layout = os.path.abspath(layout)
        self.work = work
        self.network = network
        self.secrets = {}
        self.config_maps = {}
        for d in docs:
            data = d.get("data") or {}
            if d["kind"] == "Secret":
                values = {k: base64.b64decode(v).decode() for k, v in data.items()}
                values.update(d.get("stringData") or {})
                self.secrets[d["metadata"]["name"]] = values
            elif d["kind"] == "ConfigMap":
                self.config_maps[d["metadata"]["name"]] = data
        self.pods = []  # dicts: name, labels, spec, address, ns, processes, job

    def workloads(self):
        for d in self.docs:
            kind, name = d["kind"], d["metadata"]["name"]
            if kind in ("Deployment", "StatefulSet"):
                for i in range(d["spec"].get("replicas", 1)):
                    yield kind, f"{name}-{i}", d["spec"]["template"], None
            elif kind == "DaemonSet":
                yield kind, f"{name}-node", d["spec"]["template"], None
            elif kind == "Job":
                yield kind, name, d["spec"]["template"], d["spec"]

    def start(self):
        for kind, name, template, job in self.workloads():
            ns, address = self.network.add_host(name)
            self.pods.append({"kind": kind, "name": name, "template": template, "job": job,
                              "labels": template["metadata"].get("labels", {}) if
                              template.get("metadata") else {},
                              "ns": ns, "address": address, "processes": []})
        names = {}
        for d in self.docs:
            if d["kind"] != "Service":
                continue
            pods = [p for p in self.pods if d["spec"].get("selector") and
                    all(p["labels"].get(k) == v for k, v in d["spec"]["selector"].items())]
            if not pods:
                raise Failed(f"Service {d['metadata']['name']} selects no pod")
            name = d["metadata"]["name"]
            namespace = d["metadata"].get("namespace", "default")
            for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                         f"{name}.{namespace}.svc.cluster.local"):
                names[host] = pods[0]["address"]
            self.check_ports(d, pods[0])
        self.network.set_hosts(names)
        for pod in self.pods:
            if not pod["job"]:
                for container in pod["template"]["spec"]["containers"]:
                    pod["processes"].append(self.start_container(pod, container))
        say(f"cluster: {len(self.pods)} pods started: "
            + ", ".join(f"{p['name']} ({p['address']})" for p in self.pods))

    def check_ports(self, service, pod):
        ports = {p.get("name"): p["containerPort"]
                 for c in pod["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in service["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            target = ports.get(target, target)
            if target != p["port"]:
                say(f"cluster: Service {service['metadata']['name']} port {p['port']} -> "
                    f"{target}: without kube-proxy only the target port is reachable")

    def paths(self, pod, container):
        """Where each mountPath and the image's files are in this pod's folder."""
        root = os.path.join(self.work, pod["name"], container["name"])
        spec = pod["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        paths = {"/usr/share/poplar": f"{self.layout}/usr/share/poplar"}
        user = spec.get("securityContext", {}).get("runAsUser", 0)
        mounts = container.get("volumeMounts", [])
        for mount in mounts:
            paths[mount["mountPath"]] = os.path.join(root, "volumes", mount["name"])
        for mount in mounts:
            folder = paths[mount["mountPath"]]
            if os.path.isdir(folder):  # a Job's next attempt: the same pod's volumes
                continue
            os.makedirs(folder)
            source = volumes.get(mount["name"], {})
            if "configMap" in source:
                name = source["configMap"]["name"]
                if name not in self.config_maps:
                    raise Failed(f"pod {pod['name']}: ConfigMap {name} is not in the manifests")
                for key, text in self.config_maps[name].items():
                    # A config names paths inside the pod: they become the folders standing
                    # in for them (no mount namespace).
                    with open(os.path.join(folder, key), "w") as f:
                        f.write(mapped(text, paths) if key.endswith((".yaml", ".yml")) else text)
            os.chown(folder, user, user)
        home = os.path.join(root, "workdir")
        os.makedirs(home, exist_ok=True)
        os.chown(home, user, user)
        return paths, home, user

    def env(self, container, home):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home}
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                if ref["key"] not in self.secrets.get(ref["name"], {}):
                    raise Failed(f"env {e['name']}: no key {ref['key']} in Secret {ref['name']}")
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env

    @staticmethod
    def is_poplar(container):
        return container["image"].split(":")[0].rsplit("/", 1)[-1] == IMAGE

    def argv(self, pod, container, paths):
        image = container["image"]
        if self.is_poplar(container):
            binary = f"{self.layout}/usr/local/bin/poplar"
            return [binary] + [mapped(a, paths) for a in container.get("args", [])]
        for prefix, make in STAND_INS.items():
            if image.startswith(prefix):
                root = os.path.join(self.work, pod["name"], "www")
                os.makedirs(root, exist_ok=True)
                with open(os.path.join(root, "index.html"), "w") as f:
                    f.write(f"origin {pod['name']}\n")
                return make(container["ports"][0]["containerPort"], root)
        raise Failed(f"pod {pod['name']}: no stand-in for image {image}")

    def start_container(self, pod, container):
        paths, home, user = self.paths(pod, container)
        log = os.path.join(self.work, pod["name"], f"{container['name']}.log")
        return Process(pod["name"], pod["ns"], self.argv(pod, container, paths),
                       self.env(container, home), home, user, log), container

    def probe(self, pod, container, kind):
        spec = container.get(kind)
        if not spec:
            return True
        get = spec["httpGet"]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        port = ports.get(get["port"], get["port"])
        status, _ = http_get(self.network.node, f"http://{pod['address']}:{port}{get['path']}")
        return status is not None and 200 <= status < 400

    def wait_ready(self):
        for pod in self.pods:
            for process, container in pod["processes"]:
                for kind in ("readinessProbe", "livenessProbe"):
                    wait_for(f"{pod['name']}'s {kind}",
                             lambda: (process.alive() or fail_exit(process))
                             and self.probe(pod, container, kind))
        say("cluster: every pod passes its readiness and liveness probes")

    def run_jobs(self):
        for pod in self.pods:
            job = pod["job"]
            if not job:
                continue
            container = pod["template"]["spec"]["containers"][0]
            attempts = job.get("backoffLimit", 6) + 1
            for attempt in range(1, attempts + 1):
                process, _ = self.start_container(pod, container)
                code = process.proc.wait(timeout=PATIENCE)
                if code == 0:
                    said = " ".join(process.tail().split())[:120]
                    say(f"cluster: Job {pod['name']} succeeded (attempt {attempt}): {said}")
                    break
                say(f"cluster: Job {pod['name']} attempt {attempt} exited {code}")
                time.sleep(1)
            else:
                raise Failed(f"Job {pod['name']} failed {attempts} times:\n{process.tail()}")

    def pods_named(self, prefix):
        return [p for p in self.pods if p["name"].startswith(prefix) and p["processes"]]

    def check_fleet(self):
        edges = self.pods_named("poplar-edge")
        if not edges:
            raise Failed("no edge pods")
        for edge in edges:
            url = f"http://{edge['address']}:8080"
            status, body = wait_for(f"{edge['name']} GET /greet",
                                    lambda: ok(http_get(self.network.node, f"{url}/greet")))
            say(f"cluster: {edge['name']} GET /greet: {status} {body.strip()[:60]!r}")
            status, body = wait_for(f"{edge['name']} GET /",
                                    lambda: ok(http_get(self.network.node, f"{url}/")))
            say(f"cluster: {edge['name']} GET / (the origin route): {status} "
                f"{body.strip()[:60]!r}")
        for pod in self.pods:
            annotations = pod["template"].get("metadata", {}).get("annotations", {})
            if annotations.get("prometheus.io/scrape") != "true":
                continue
            url = (f"http://{pod['address']}:{annotations['prometheus.io/port']}"
                   f"{annotations.get('prometheus.io/path', '/metrics')}")
            status, body = http_get(self.network.node, url)
            if status != 200 or b"# TYPE poplar_" not in body:
                raise Failed(f"{pod['name']}: {url} answered {status}")
            say(f"cluster: {pod['name']} serves Prometheus metrics at {url} "
                f"({body.count(b'# TYPE ')} families)")

    def stop(self):
        for pod in self.pods:
            grace = pod["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            for process, container in pod["processes"]:
                started = time.monotonic()
                code = process.stop(signal.SIGTERM, grace)
                took = time.monotonic() - started
                if code is not None and not self.is_poplar(container):
                    continue  # a stand-in: stopped in time is all that is asked of it
                if code != 0:
                    raise Failed(f"{pod['name']} exited {code} on SIGTERM "
                                 f"(grace {grace}s, {took:.1f}s):\n{process.tail()}")
            if any(self.is_poplar(c) for _, c in pod["processes"]):
                say(f"cluster: {pod['name']} stopped on SIGTERM with exit 0 "
                    f"within its {grace}s grace period")

    def kill(self):
        for pod in self.pods:
            for process, _ in pod["processes"]:
                process.stop(signal.SIGKILL, 5)


def run_cluster(args, work, network):
    import yaml  # PyYAML: kubernetes-validate's, in check-deploy's venv

    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    cluster = Cluster(docs, args.layout, work, network)
    try:
        cluster.start()
        cluster.wait_ready()
        cluster.run_jobs()
        cluster.check_fleet()
        cluster.stop()
    except Failed:
        for pod in cluster.pods:
            for process, _ in pod["processes"]:
                say(f"--- {pod['name']}'s log:\n{process.tail()}")
        raise
    finally:
        cluster.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["image", "cluster"])
    parser.add_argument("--layout", required=True, help="the image's files")
    parser.add_argument("--dockerfile", default="Dockerfile")
    parser.add_argument("--rendered", help="kubectl kustomize's output")
    args = parser.parse_args()
    if os.geteuid() != 0:
        say("SKIPPED: needs root (network namespaces)")
        return 3
    work = tempfile.mkdtemp(prefix="poplar-pods-")
    os.chmod(work, 0o755)
    network = Network()
    try:
        (run_image if args.mode == "image" else run_cluster)(args, work, network)
        return 0
    except Failed as e:
        say(f"FAILED: {e}")
        return 1
    finally:
        network.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
