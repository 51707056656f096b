"""kymamesh: install and maintain a Kyma Service Mesh (Istio, made Kyma-ready)."""

__version__ = "0.1.0"

FIELD_MANAGER = "kymamesh"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def owned_configmap(name: str, namespace: str, data: dict[str, str]) -> dict[str, object]:
    """A ConfigMap of kymamesh's own state, labelled as managed by kymamesh."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "kymamesh"},
        },
        "data": data,
    }
