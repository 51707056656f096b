"""Workflows: what each command does, step by step, on one cluster or several.

`pipeline` (install and patch in two phases), `patching` (the ordered patch list), `canary`,
`takeover`, `uninstall`, `status`, `injection` (inject-namespace), `releases`, and
`multicluster` (mesh join, status, rotate, leave).
"""
