"""Real Kubernetes for the tests: control planes started by ``tools/kubecluster`` and a
fault-injecting, request-counting proxy in front of their API servers."""
