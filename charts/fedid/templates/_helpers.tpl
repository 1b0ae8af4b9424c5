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

{{/*
The rules fedid needs where identities live: granted cluster-wide by the ClusterRole, or, with
watchNamespaces, by a Role in each of those namespaces. Called with (dict "root" $ "scope" S),
S naming what the rules cover ("every namespace" or "this namespace").
*/}}
{{- define "fedid.namespacedRules" -}}
{{- $root := .root }}
# Identities are watched and cached; fedid reports conditions, key IDs and token times through
# the status subresource only and never changes a spec.
- apiGroups: [fedid.dev]
  resources: [federatedidentities]
  verbs: [get, list, watch]
- apiGroups: [fedid.dev]
  resources: [federatedidentities/status]
  verbs: [patch]
# Token Secrets live in the identities' namespaces. fedid lists and watches only Secrets
# labelled fedid.dev/identity (and the client secrets their owners label
# fedid.dev/client-credentials=true), but RBAC cannot restrict by label: this list/watch covers
# every Secret in {{ .scope }}, data included. It creates a token Secret once and then
# server-side-applies it (patch, which RBAC cannot restrict to fedid's own Secrets either).
# There is deliberately no get or update: an identity's token Secret is deleted by the garbage
# collector through its ownerReference to the identity. Delete: a token must stop being
# readable as soon as its identity loses the right to it (the issuer no longer allows the
# namespace, or is gone), not when it expires, so the leader deletes that identity's Secret;
# likewise a pod's Secret once the pod has finished (Succeeded or Failed), long before the
# garbage collector removes it with the pod, and the shared token an identity wrote before it
# became a pod template. RBAC cannot restrict delete to fedid's Secrets either; fedid deletes
# only a Secret that the identity or pod controls and fedid wrote, with a UID precondition so a
# replaced Secret of the same name is never deleted.
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch, create, patch, delete]
# CA bundles an identity's exchange trusts (spec.exchange.caBundleRef): fedid lists and watches
# only ConfigMaps labelled fedid.dev/ca-bundle=true, but, as for Secrets, RBAC cannot restrict
# by label, so this covers every ConfigMap in {{ .scope }}. No get, create or patch.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch]
# Events on identities (Issued, failures) and, with pods.enabled, opted-in pods: created once,
# then patched to count a repeated event's series.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if $root.Values.pods.enabled }}
# Opted-in pods (labelled fedid.dev/identity): the leader's pod controller and every replica's
# token endpoint list and watch only those (RBAC cannot restrict by label, so this covers every
# pod's spec in {{ .scope }}, which may hold environment values); the token endpoint gets a
# requesting pod its cache has not seen yet. fedid never writes a pod.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- end }}
{{- if $root.Values.rollout.enabled }}
# With rollout.enabled: the workloads an identity's spec.output.rollout lists, in the
# identity's own namespace, get a merge patch of one pod template annotation
# (fedid.dev/credentials-digest) when the credentials change, which restarts their pods. RBAC
# cannot restrict a patch to one field: this right could change any field of every Deployment,
# StatefulSet and DaemonSet in {{ .scope }}. No get, list or watch.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [patch]
{{- end }}
{{- end }}
