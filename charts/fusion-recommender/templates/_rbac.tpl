{{/*
The operator's rules on namespaced resources, one per line of PERMISSIONS in operator/rbac.py
(the reasons are there).
*/}}
{{- define "fusion-recommender.namespacedRules" -}}
- apiGroups: ["fusionrec.io"]
  resources: ["fusionrecommenders"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["fusionrec.io"]
  resources: ["fusionrecommenders/status"]
  verbs: ["patch"]
- apiGroups: ["fusionrec.io"]
  resources: ["fusionrecommenders/finalizers"]
  verbs: ["update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
