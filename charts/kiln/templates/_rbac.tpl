{{/*
Exactly the API calls the operator makes. tests/unit/chart/test_rbac.py derives them from the
operator's code and compares both ways; tests/integration/monitoring checks a real run's requests.
*/}}

{{/* Namespaced resources: in the ClusterRole (cluster-wide) or in a Role per watched namespace. */}}
{{- define "kiln.namespacedRules" -}}
# kopf watches jobs and patches its finalizer and progress annotations; the operator reads a job
# it has not seen in that watch yet and deletes it after ttlSecondsAfterFinished.
- apiGroups: ["kiln.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["kiln.dev"]
  resources: ["trainingjobs/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion, which needs update on the owner's
# finalizers where the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["kiln.dev"]
  resources: ["trainingjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
# The job's Secret (its Ray token) is only ever created, with the pods that need it: a 409
# says it exists, and the operator never reads a Secret. Like the Service and NetworkPolicy,
# it is removed by the garbage collector with the job.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# Pods, Services, ConfigMaps and NetworkPolicies are read from the operator's watch-fed caches
# (list + watch of Kiln's objects); by name only while a cache is (re)listing.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create"]
# The job's ConfigMap (the job file the driver reads) is replaced (deleted) when it holds an
# older accepted spec than the pods about to be created.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and (include "kiln.peering" .) .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Cluster-scoped resources. kopf runs with scanning disabled: no CRD or namespace access. */}}
{{- define "kiln.clusterRules" -}}
{{- if and (include "kiln.peering" .) (not .Values.watchNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}
