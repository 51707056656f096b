"""The user's workloads: rolling them out and restarting them in batches.

`rollouts` judges whether a Deployment, StatefulSet or DaemonSet has finished rolling out;
`restarts` plans which workloads need a restart for their sidecars and carries it out in
batches. Steps, the canary, upgrades and `status` all call these two.
"""
