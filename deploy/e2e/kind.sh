#!/usr/bin/env bash
# End-to-end check of sluice on a real Kubernetes cluster made with kind (Kubernetes in
# Docker). NOT run in CI (no Docker daemon or cluster there); see README.md.
#
#   deploy/e2e/kind.sh            # create the cluster, build, deploy, test, keep it
#   deploy/e2e/kind.sh --delete   # and delete the cluster at the end
#
# Needs: docker, kind, kubectl (1.30+), curl. Environment:
#   CLUSTER            kind cluster name (default sluice-e2e)
#   GATEWAY_API_BUNDLE path or URL of the Gateway API standard-channel CRD bundle,
#                      `standard-install.yaml` of a release v1.5 or newer (required for
#                      the Gateway API part; skipped when unset)
#   SKIP_BUILD=1       reuse an image sluice:dev already built
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER="${CLUSTER:-sluice-e2e}"
NODE_PORT=30080
delete=0
[ "${1:-}" = --delete ] && delete=1

for tool in docker kind kubectl curl; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

step() { printf '\n== %s\n' "$*"; }

# Polls `curl` until the body contains $2, for at most 120 s.
expect() {
  local path="$1" want="$2" host="${3:-echo.example.com}" i body=""
  for i in $(seq 1 120); do
    body="$(curl -s -H "Host: $host" "http://127.0.0.1:$NODE_PORT$path" || true)"
    case "$body" in *"$want"*) echo "ok: $path -> $want"; return 0 ;; esac
    sleep 1
  done
  echo "FAILED: $path (Host $host) never answered with '$want'; last answer: $body" >&2
  return 1
}

step "cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  cat <<KIND | kind create cluster --name "$CLUSTER" --wait 120s --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - {containerPort: $NODE_PORT, hostPort: $NODE_PORT, listenAddress: 127.0.0.1}
KIND
fi
kubectl config use-context "kind-$CLUSTER"

step "image sluice:dev"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  docker build -f deploy/Dockerfile -t sluice:dev .
fi
kind load docker-image sluice:dev --name "$CLUSTER"

if [ -n "${GATEWAY_API_BUNDLE:-}" ]; then
  step "Gateway API CRDs (upstream standard channel)"
  kubectl apply --server-side -f "$GATEWAY_API_BUNDLE"
  kubectl wait --for condition=Established --timeout=60s crd/gateways.gateway.networking.k8s.io crd/httproutes.gateway.networking.k8s.io
fi

step "sluice (overlay dev)"
if [ -n "${GATEWAY_API_BUNDLE:-}" ]; then
  kubectl apply -k deploy/kubernetes/overlays/dev
else
  # Without the Gateway API CRDs the GatewayClass cannot be created: leave it out.
  kubectl kustomize deploy/kubernetes/overlays/dev \
    | awk 'BEGIN{RS="\n---\n"; ORS="\n---\n"} !/kind: GatewayClass/' \
    | kubectl apply -f -
fi
kubectl -n sluice patch service sluice --type json \
  -p "[{\"op\":\"replace\",\"path\":\"/spec/ports/0/nodePort\",\"value\":$NODE_PORT}]"
kubectl -n sluice rollout status deployment/sluice --timeout=180s

step "demo backends and an Ingress with a canary"
kubectl apply -f deploy/kubernetes/examples/demo-backend.yaml
kubectl -n demo rollout status deployment/echo --timeout=120s
kubectl -n demo rollout status deployment/echo-canary --timeout=120s
kubectl apply -f deploy/kubernetes/examples/ingress.yaml
expect / echo-stable
# canary-by-header: always
for i in $(seq 1 60); do
  body="$(curl -s -H 'Host: echo.example.com' -H 'x-canary: always' "http://127.0.0.1:$NODE_PORT/")"
  case "$body" in *echo-canary*) echo "ok: x-canary: always -> canary"; break ;; esac
  [ "$i" = 60 ] && { echo "FAILED: canary-by-header" >&2; exit 1; }
  sleep 1
done

step "an endpoint change: scale the stable backend to 0 and back"
kubectl -n demo scale deployment/echo --replicas=0
kubectl -n demo scale deployment/echo --replicas=2
kubectl -n demo rollout status deployment/echo --timeout=120s
expect / echo-stable

if [ -n "${GATEWAY_API_BUNDLE:-}" ]; then
  step "Gateway API: a Gateway and HTTPRoutes"
  kubectl apply -f deploy/kubernetes/examples/gateway-api.yaml
  kubectl -n demo wait --for=condition=Accepted --timeout=60s gateway/web
  kubectl -n demo get httproute echo -o jsonpath='{.status.parents[*].conditions}'; echo
  expect /v1/hello echo-stable
fi

step "SluicePolicy CRD accepts the examples"
kubectl apply --dry-run=server -f deploy/kubernetes/examples/sluicepolicy.yaml

step "all checks passed"
if [ "$delete" = 1 ]; then
  kind delete cluster --name "$CLUSTER"
fi
