"""Fixed Ray ports of the head pod (the Service and the probes name them).

Only the head's: each pod has its own network namespace on a cluster, but Ray binds
every address, so fixed ports on workers would collide wherever pods share a network
(a process kubelet in tests). All sit below Ray's worker port range (10002-19999).
"""

GCS_PORT = 6379
DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080
