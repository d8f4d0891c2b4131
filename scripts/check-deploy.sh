#!/usr/bin/env bash
# Checks what deploys Poplar, as part of the test suite (scripts/test.sh):
# - the Dockerfile's shape: two stages, the build stage runs the suite's own set-up and task
#   scripts, the run stage is a non-root user with `poplar` as entrypoint, the example tasks
#   and a health check on /_poplar/health;
# - the build stage's commands, run as plain shell, make the image's files, and they run as
#   `docker run` would (scripts/pods.py image: needs root for its network namespace);
# - every Poplar config under deploy/ passes `poplar check`;
# - every kustomization renders (kubectl kustomize) and validates against the Kubernetes
#   1.32 API schemas (kubernetes-validate from PyPI, pinned, in target/deploy-venv);
# - the demo overlay's pods run, as on a cluster of one node (scripts/pods.py cluster, root);
# - every command in docs/DEPLOY.md's command blocks is one of those checked here.
# No container runtime or cluster is needed. Usage: scripts/check-deploy.sh [path/to/poplar]
set -euo pipefail
cd "$(dirname "$0")/.."
poplar=${1:-target/debug/poplar}
fail() { echo "check-deploy: $*" >&2; exit 1; }
# The keys and tokens the configs read from the environment (the pods get them from a Secret).
export POPLAR_FORWARDING_KEY=check-deploy-forwarding-key-0123456789
export POPLAR_DEPLOY_TOKEN=check-deploy-deploy-token-0123
export POPLAR_ADMIN_TOKEN=check-deploy-admin-token-0123

python3 - Dockerfile <<'PY' || fail "Dockerfile: see above"
import re, sys
text = open(sys.argv[1]).read()
lines = re.sub(r"\\\n", " ", text).splitlines()
stages, current = [], None
for line in lines:
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "FROM":
        current = {"from": rest, "runs": [], "lines": []}
        stages.append(current)
    elif current is not None:
        current["lines"].append((word, rest))
        if word == "RUN":
            current["runs"].append(rest)
problems = []
if len(stages) != 2:
    problems.append(f"{len(stages)} stages, not 2 (build, run)")
else:
    build, run = stages
    joined = " ".join(build["runs"])
    for needed in ["scripts/setup.sh", "scripts/build-tasks.sh", "cargo build --release --locked"]:
        if needed not in joined:
            problems.append(f"the build stage does not run {needed!r}")
    got = dict(run["lines"])
    if got.get("USER", "0").split(":")[0] in ("0", "root"):
        problems.append("the run stage runs as root")
    if got.get("ENTRYPOINT") != '["poplar"]':
        problems.append(f"entrypoint {got.get('ENTRYPOINT')!r}, not [\"poplar\"]")
    if "/_poplar/health" not in got.get("HEALTHCHECK", ""):
        problems.append("no HEALTHCHECK on /_poplar/health")
    if "--from=build" not in " ".join(r for w, r in run["lines"] if w == "COPY"):
        problems.append("the run stage copies nothing from the build stage")
    if "tasks/dist/*.wasm" not in joined:
        problems.append("the example tasks are not in the image")
for p in problems:
    print("Dockerfile:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "check-deploy: Dockerfile shape ok" >&2

# No container runtime here: the build stage's RUN commands run as plain shell in this
# checkout (the build context), laying the image's files out under a scratch folder in place
# of /out; then the image's binary checks the image's configs, and the image runs as
# `docker run` would (scripts/pods.py image). CHECK_DEPLOY_BUILD=0 skips the release build (about
# 14 minutes on 2 cores, from nothing) and lays the files out around the given binary instead.
scratch=$(mktemp -d)
chmod 755 "$scratch"   # the image's files are read by its user, 10001
trap 'rm -rf "$scratch"' EXIT
build=${CHECK_DEPLOY_BUILD:-1}
python3 - Dockerfile "$build" "$poplar" > "$scratch/build-stage.sh" <<'PY'
import re, sys
lines = re.sub(r"\\\n", " ", open(sys.argv[1]).read()).splitlines()
build, binary = sys.argv[2] != "0", sys.argv[3]
stage = 0
print("set -euo pipefail")
for line in lines:
    word, _, rest = line.strip().partition(" ")
    if word.upper() == "FROM":
        stage += 1
    elif stage == 1 and word.upper() == "RUN":
        if not build:
            rest = rest.replace("cargo build --release --locked --bin poplar", "true")
            rest = rest.replace("target/release/poplar", binary)
        print(rest.replace("/out", '"$OUT"'))
PY
OUT="$scratch/out" bash "$scratch/build-stage.sh" >&2 || fail "the build stage's commands failed"
image="$scratch/out"
[ -x "$image/usr/local/bin/poplar" ] || fail "the build stage made no /usr/local/bin/poplar"
"$image/usr/local/bin/poplar" --version >&2
for config in "$image/etc/poplar/poplar.yaml" "$image"/usr/share/poplar/conf/*.yaml; do
  "$image/usr/local/bin/poplar" check -c "$config" >&2 \
    || fail "${config#"$image"} does not pass the image's poplar check"
done
if [ "$build" != 0 ]; then
  echo "check-deploy: the build stage, run as plain shell, made the image's files" >&2
else
  echo "check-deploy: SKIPPED the build stage's release build (CHECK_DEPLOY_BUILD=0); its files laid out around $poplar" >&2
fi
# docker run: in a network namespace of its own, as the image's user (needs root).
pods_status=0
python3 scripts/pods.py image --layout "$image" --dockerfile Dockerfile || pods_status=$?
case $pods_status in
  0) echo "check-deploy: the image's files run as docker run would: /hello, HEALTHCHECK, STOPSIGNAL" >&2 ;;
  3) echo "check-deploy: SKIPPED running the image: no network namespaces (not root)" >&2 ;;
  *) fail "the image does not run (scripts/pods.py image)" ;;
esac

# The configs the manifests mount, with the environment the pods give them.
for config in deploy/kubernetes/base/*.poplar.yaml; do
  "$poplar" check -c "$config" >&2 || fail "$config does not pass poplar check"
done

if ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "check-deploy: SKIPPED rendering and validating the manifests: no kubectl with kustomize on this machine" >&2
  exit 0
fi
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.32.0
fi
out="$scratch/rendered"
mkdir -p "$out"
validate() { "$venv/bin/kubernetes-validate" -k 1.32.0 --strict --quiet "$@" >&2; }
for kustomization in deploy/kubernetes/overlays/*/ deploy/kubernetes/tasks/; do
  name=$(basename "$kustomization")
  kubectl kustomize "$kustomization" > "$out/$name.yaml" || fail "$kustomization does not render"
  # Strict: unknown fields are errors. Kinds of other projects' CRDs (ServiceMonitor) have no
  # schema here and are reported as warnings.
  validate "$out/$name.yaml" || fail "$kustomization does not validate against Kubernetes 1.32"
  kinds=$(grep -c '^kind:' "$out/$name.yaml")
  echo "check-deploy: $kustomization: $kinds resources, valid for Kubernetes 1.32" >&2
done

# kubectl apply -k overlays/demo, on a cluster of network namespaces (needs root).
pods_status=0
"$venv/bin/python" scripts/pods.py cluster --layout "$image" --rendered "$out/demo.yaml" \
  || pods_status=$?
case $pods_status in
  0) echo "check-deploy: the demo overlay's pods run: probes, the Job's deploy, /greet, metrics, SIGTERM" >&2 ;;
  3) echo "check-deploy: SKIPPED running the demo overlay's pods: no network namespaces (not root)" >&2 ;;
  *) fail "the demo overlay's pods do not run (scripts/pods.py cluster)" ;;
esac

# Every command docs/DEPLOY.md gives (its sh blocks) is one this suite runs or renders: a
# command it does not know is a failure, so the guide cannot grow one nobody checked.
python3 - docs/DEPLOY.md > "$scratch/commands" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for block in re.findall(r"```sh\n(.*?)```", text, re.S):
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            print(line)
PY
while IFS= read -r command; do
  case "$command" in
    "docker build -t "*" .")
      how="the build stage's commands, run as plain shell above" ;;
    "docker run "*|"curl "*)
      how="scripts/pods.py image and cluster run the image's files and ask them so" ;;
    "kubectl kustomize "*|"kubectl apply -k "*)
      dir=${command##* }; dir=${dir%/}
      [ -f "$out/$(basename "$dir").yaml" ] || fail "DEPLOY.md: $command: $dir is not rendered here"
      how="rendered and validated above"
      [ "$dir" = deploy/kubernetes/overlays/demo ] && [ "$pods_status" = 0 ] \
        && how="$how, and its pods run (scripts/pods.py cluster)" ;;
    "kubectl "*" create "*|"kubectl create "*)
      (eval "$command --dry-run=client -o yaml") > "$out/created.yaml" \
        || fail "DEPLOY.md: $command does not render"
      validate "$out/created.yaml" || fail "DEPLOY.md: $command does not validate"
      how="rendered with --dry-run=client and validated" ;;
    "export "*)
      how="shell" ;;
    "sudo scripts/fleet.sh"*)
      how="tests/fleet.rs runs it" ;;
    *)
      fail "DEPLOY.md gives \`$command\`, which this suite neither runs nor renders" ;;
  esac
  echo "check-deploy: DEPLOY.md: $command: $how" >&2
done < "$scratch/commands"
