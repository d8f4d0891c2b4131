#!/usr/bin/env bash
# Checks what deploys Poplar, as part of the test suite (scripts/test.sh):
# - the Dockerfile's shape: two stages, the build stage runs the suite's own set-up and task
#   scripts, the run stage is a non-root user with `poplar` as entrypoint, the example tasks
#   and a health check on /_poplar/health;
# - every Poplar config under deploy/ passes `poplar check`;
# - every kustomize overlay renders (kubectl kustomize) and validates against the Kubernetes
#   1.32 API schemas (kubernetes-validate from PyPI, pinned, in target/deploy-venv).
# No container runtime is needed. Usage: scripts/check-deploy.sh [path/to/poplar]
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
# of /out; then the image's binary and configs are checked. CHECK_DEPLOY_BUILD=0 skips it
# (a release build: about 14 minutes on 2 cores, from nothing).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if [ "${CHECK_DEPLOY_BUILD:-1}" != 0 ]; then
  python3 - Dockerfile > "$scratch/build-stage.sh" <<'PY'
import re, sys
lines = re.sub(r"\\\n", " ", open(sys.argv[1]).read()).splitlines()
stage = 0
print("set -euo pipefail")
for line in lines:
    word, _, rest = line.strip().partition(" ")
    if word.upper() == "FROM":
        stage += 1
    elif stage == 1 and word.upper() == "RUN":
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
  echo "check-deploy: the build stage, run as plain shell, made the image's files" >&2
else
  echo "check-deploy: SKIPPED the build stage (CHECK_DEPLOY_BUILD=0)" >&2
fi

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
for overlay in deploy/kubernetes/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" > "$out/$name.yaml" || fail "overlay $name does not render"
  # Strict: unknown fields are errors. Kinds of other projects' CRDs (ServiceMonitor) have no
  # schema here and are reported as warnings.
  "$venv/bin/kubernetes-validate" -k 1.32.0 --strict --quiet "$out/$name.yaml" >&2 \
    || fail "overlay $name does not validate against Kubernetes 1.32"
  kinds=$(grep -c '^kind:' "$out/$name.yaml")
  echo "check-deploy: overlay $name: $kinds resources, valid for Kubernetes 1.32" >&2
done
# docs/DEPLOY.md's Secret for production, rendered as the client would send it.
kubectl -n poplar create secret generic poplar-keys --dry-run=client -o yaml \
  --from-literal=forwarding-key="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  --from-literal=deploy-token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  --from-literal=admin-token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  > "$out/secret.yaml"
"$venv/bin/kubernetes-validate" -k 1.32.0 --strict --quiet "$out/secret.yaml" >&2 \
  || fail "the Secret of docs/DEPLOY.md does not validate"
echo "check-deploy: docs/DEPLOY.md's Secret renders and validates" >&2
