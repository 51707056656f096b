"""kymamesh: install and maintain a Kyma Service Mesh (Istio, made Kyma-ready)."""

__version__ = "0.1.0"

FIELD_MANAGER = "kymamesh"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
