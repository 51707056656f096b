"""Adapters: the only code that speaks to the outside world.

`cluster` is the one place that talks to the Kubernetes API, `helm` the one that runs the
helm binary, `lock` the Lease that lets one kymamesh run write to a cluster at a time, and
`yamlfast` reads and writes YAML with the C library when it is there.
"""
