"""Istio's facts: what kymamesh knows about Istio and reads from it.

The supported releases and their charts (`release`, `versions`), the values and mesh
config Istio accepts (`values`, `meshschema`, `security`), and what a live Istio is made
of: its control planes and revisions (`controlplane`, `revisions`, `tags`), its sidecars
(`sidecars`), the mesh config istiod really runs (`meshview`), what Istio a cluster
holds (`inventory`) and whether a cluster can take a release (`preflight`).
"""
