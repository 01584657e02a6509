{{/*
Names and labels shared by every template.
*/}}

{{- define "fusion-recommender.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's object names: "<release>-<chart>", or the release name alone when it already contains the
chart's name. 52 characters leave room for the suffixes below ("-metrics", "-crds") within 63.
*/}}
{{- define "fusion-recommender.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fusion-recommender.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. The component is part of them: the serving pods the operator creates carry the same
app.kubernetes.io/name, and an instance equal to their FusionRecommender's name, which may match a release's.
*/}}
{{- define "fusion-recommender.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fusion-recommender.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "fusion-recommender.labels" -}}
helm.sh/chart: {{ include "fusion-recommender.chart" . }}
{{ include "fusion-recommender.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fusion-recommender
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "fusion-recommender.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fusion-recommender.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins when set, the tag defaults to appVersion.
Usage: include "fusion-recommender.image" (list .Values.image .Chart.AppVersion)
*/}}
{{- define "fusion-recommender.image" -}}
{{- $image := index . 0 }}
{{- $appVersion := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's verbosity as its CLI flags (python -m fusionrec.operator): kopf's quiet, default, verbose
and debug modes.
*/}}
{{- define "fusion-recommender.logFlag" -}}
{{- $flags := dict "warning" "--quiet" "info" "" "debug" "--verbose" "trace" "--debug" }}
{{- get $flags .Values.logLevel }}
{{- end }}

{{/*
The metrics Service's name; the PrometheusRule's operator alerts select on it (Prometheus Operator puts it
in the `service` label of every scraped series).
*/}}
{{- define "fusion-recommender.metricsServiceName" -}}
{{- printf "%s-metrics" (include "fusion-recommender.fullname" .) }}
{{- end }}

{{/*
The PromQL matchers that pick this release's operator series.
*/}}
{{- define "fusion-recommender.operatorSeries" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "fusion-recommender.metricsServiceName" . }}"
{{- end }}

{{/*
PromQL matchers for the serving series this operator is responsible for: all namespaces, or the watched ones.
*/}}
{{- define "fusion-recommender.servingSeries" -}}
{{- if .Values.watchNamespaces }}namespace=~"{{ join "|" .Values.watchNamespaces }}"{{ end }}
{{- end }}
