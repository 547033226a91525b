{{/*
Names are fixed (redis-xds), as in deploy/: the CRD, the webhook configuration and the
ClusterRoles are cluster-wide, so one install per cluster. The namespace is the release's.
*/}}

{{/* Labels of every object: the selector label, and Helm's own. */}}
{{- define "redis-xds.labels" -}}
app.kubernetes.io/name: redis-xds
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The ServiceAccount subject of the bindings. */}}
{{- define "redis-xds.subject" -}}
- kind: ServiceAccount
  name: redis-xds
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* The Service's DNS name, which the serving certificate carries. */}}
{{- define "redis-xds.serviceDNS" -}}
redis-xds.{{ .Release.Namespace }}.svc
{{- end -}}
