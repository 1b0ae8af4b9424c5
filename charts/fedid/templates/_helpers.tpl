{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "fedid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of object names: fullnameOverride, else the release name when it already contains the
chart name (so `helm install fedid` gives "fedid", not "fedid-fedid"), else "<release>-<chart>".
Truncated to 63 characters, the limit of a DNS label (Service names are DNS labels).
*/}}
{{- define "fedid.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label ("+" is not allowed in label values). */}}
{{- define "fedid.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select this release's pods. They must never change after install: a Deployment's
selector is immutable, so nothing version-dependent belongs here.
*/}}
{{- define "fedid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "fedid.labels" -}}
helm.sh/chart: {{ include "fedid.chart" . }}
{{ include "fedid.selectorLabels" . }}
app.kubernetes.io/version: {{ include "fedid.version" . | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: fedid
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The image tag the release runs: image.tag, else the chart's appVersion. */}}
{{- define "fedid.version" -}}
{{- .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The image reference; a digest pins it and wins over the tag. */}}
{{- define "fedid.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "fedid.version" .) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the operator runs as, created or existing. */}}
{{- define "fedid.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fedid.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false (the existing ServiceAccount to run as)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The name of the http port on the pod, the Service and in the probes. */}}
{{- define "fedid.portName" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The scheme the operator serves: HTTPS with a certificate, else HTTP. */}}
{{- define "fedid.scheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/* The Service port: 443 for HTTPS, 80 for HTTP. */}}
{{- define "fedid.servicePort" -}}
{{- if .Values.tls.enabled }}443{{ else }}80{{ end }}
{{- end }}

{{/*
The pod server's Service (and the name of its Certificate): "<fullname>-pods", the full name
shortened so that it stays a DNS label.
*/}}
{{- define "fedid.podsName" -}}
{{- printf "%s-pods" (include "fedid.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/* The names the pod server's certificate is valid for: its Service's, comma-separated. */}}
{{- define "fedid.podsHosts" -}}
{{- $service := printf "%s.%s.svc" (include "fedid.podsName" .) .Release.Namespace }}
{{- printf "%s,%s.cluster.local" $service $service }}
{{- end }}

{{/* Whether cert-manager issues the pod server's certificate ("true" or empty). */}}
{{- define "fedid.podsCertManager" -}}
{{- if and .Values.pods.enabled .Values.pods.certManager.enabled }}true{{ end }}
{{- end }}

{{/* Whether fedid generates the pod server's certificate and patches the webhook's caBundle. */}}
{{- define "fedid.podsGeneratedCert" -}}
{{- if and .Values.pods.enabled (not .Values.pods.certManager.enabled) }}true{{ end }}
{{- end }}
