#!/usr/bin/env bash
# The plain way to what `kymamesh install` leaves, for side-by-side measurements
# (benchmarks/compare.py): three `helm upgrade --install --wait` with the Kyma settings
# given as Helm values, then `kubectl apply` of the rest. No checks, no lock, no
# preflight, no security validation: a baseline for speed, not a replacement.
#
#   benchmarks/plain-install.sh [CHARTS_DIR]     (default: tests/fixtures/charts)
#
# Needs helm, kubectl and openssl on PATH and KUBECONFIG pointing at the cluster.
# DOMAIN (default local.kyma.dev) and TIMEOUT (default 300s) can be set.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
charts=${1:-$here/../tests/fixtures/charts}
domain=${DOMAIN:-local.kyma.dev}
timeout=${TIMEOUT:-300s}
ns=istio-system
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Phase 1 with the Kyma settings as values: security on, sidecar resources, opt-in
# injection, tracing to Zipkin in kyma-system, the Kyma webhook as ext-authz provider.
cat >"$work/istiod.yaml" <<'EOF'
meshConfig:
  enableAutoMtls: true
  rootNamespace: istio-system
  defaultConfig:
    tracing:
      zipkin:
        address: zipkin.kyma-system:9411
  defaultProviders:
    tracing: [kyma-zipkin]
  extensionProviders:
    - name: kyma-zipkin
      zipkin:
        service: zipkin.kyma-system.svc.cluster.local
        port: 9411
    - name: kyma-webhook
      envoyExtAuthzHttp:
        service: kyma-webhook.kyma-system.svc.cluster.local
        port: 8443
        timeout: 5s
        includeRequestHeadersInCheck: [authorization, cookie]
        headersToUpstreamOnAllow: [authorization]
sidecarInjectorWebhook:
  enableNamespacesByDefault: false
global:
  proxy:
    autoInject: disabled
    resources:
      requests: {cpu: 10m, memory: 128Mi}
      limits: {cpu: "1", memory: 1024Mi}
  proxy_init:
    resources:
      requests: {cpu: 10m, memory: 10Mi}
      limits: {cpu: 100m, memory: 50Mi}
EOF

# Helm 4 applies server-side: istiod itself owns fields of the webhook configurations
# (their failurePolicy, caBundle), so a re-run must take them back or it fails.
force=()
case "$(helm version --template '{{.Version}}')" in v3.*) ;; *) force=(--force-conflicts) ;; esac
helm upgrade --install istio-base "$charts/base" -n "$ns" --create-namespace \
  --set defaultRevision=default --wait --timeout "$timeout" "${force[@]}"
helm upgrade --install istiod "$charts/istiod" -n "$ns" \
  -f "$work/istiod.yaml" --wait --timeout "$timeout" "${force[@]}"
helm upgrade --install istio-ingressgateway "$charts/gateway" -n "$ns" \
  --set labels.istio=ingressgateway --wait --timeout "$timeout" "${force[@]}"

# Phase 2: what values cannot say. A self-signed pair like kymamesh's (P-256, one year).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -keyout "$work/tls.key" -out "$work/tls.crt" -subj "/CN=*.$domain" \
  -addext "subjectAltName=DNS:*.$domain,DNS:$domain" 2>/dev/null
kubectl create secret tls kyma-gateway-certs -n "$ns" \
  --cert "$work/tls.crt" --key "$work/tls.key" --dry-run=client -o yaml | kubectl apply -f -

kubectl apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: kyma-system
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: $ns
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: kyma-gateway
  namespace: kyma-system
spec:
  selector:
    istio: ingressgateway
  servers:
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: ["*.$domain"]
      tls: {mode: SIMPLE, credentialName: kyma-gateway-certs}
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ["*.$domain"]
      tls: {httpsRedirect: true}
EOF
