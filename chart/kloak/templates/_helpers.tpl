{{/*
Template helpers. The chart keeps to the template subset of scripts/chart/render (see
scripts/chart/README.md): include, define, template, toYaml, nindent, indent, quote, default,
required, printf, eq/ne/and/or/not, if/else/range/with, trunc, trimSuffix, contains, list, has.
*/}}

{{- define "kloak.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name: short enough for "<prefix>-controller-metrics" (63). */}}
{{- define "kloak.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kloak.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kloak.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kloak.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kloak.labels" -}}
helm.sh/chart: {{ include "kloak.chart" . }}
{{ include "kloak.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kloak
{{- end -}}

{{- define "kloak.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) | replace ":@" "@" -}}
{{- end -}}

{{/* Names shared by several templates and passed to the binary as flags. */}}
{{- define "kloak.controller.name" -}}{{ include "kloak.fullname" . }}-controller{{- end -}}
{{- define "kloak.webhook.name" -}}{{ include "kloak.fullname" . }}-webhook{{- end -}}
{{- define "kloak.certgen.name" -}}{{ include "kloak.fullname" . }}-certgen{{- end -}}
{{- define "kloak.tlsSecret" -}}{{ default (printf "%s-webhook-tls" (include "kloak.fullname" .)) .Values.webhook.tls.secretName }}{{- end -}}
{{- define "kloak.webhookConfig" -}}{{ include "kloak.fullname" . }}{{- end -}}
{{- define "kloak.lease" -}}{{ include "kloak.fullname" . }}-controller{{- end -}}

{{/* certgen runs (as hook Job and/or init container) unless a certificate is provided. */}}
{{- define "kloak.certgenHook" -}}
{{- if and (not .Values.webhook.tls.secretName) (or (eq .Values.certgen.mode "hook") (eq .Values.certgen.mode "both")) -}}true{{- end -}}
{{- end -}}
{{- define "kloak.certgenInit" -}}
{{- if and (not .Values.webhook.tls.secretName) (or (eq .Values.certgen.mode "initContainer") (eq .Values.certgen.mode "both")) -}}true{{- end -}}
{{- end -}}

{{/* Unprivileged container security context (webhook and certgen). */}}
{{- define "kloak.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kloak.logEnv" -}}
- name: KLOAK_LOG
  value: {{ .Values.logLevel | quote }}
- name: KLOAK_LOG_JSON
  value: {{ ternary "true" "false" .Values.logJson | quote }}
{{- end -}}

{{/* certgen arguments shared by the hook Job and the init container. */}}
{{- define "kloak.certgenArgs" -}}
- certgen
- --service={{ include "kloak.webhook.name" . }}
- --secret={{ include "kloak.tlsSecret" . }}
- --webhook-config={{ include "kloak.webhookConfig" . }}
- --min-validity-days={{ .Values.certgen.minValidityDays }}
{{- end -}}

{{/*
The agent's Secret rules. Source Secrets are read (the code label-selects
getkloak.io/enabled=true and getkloak.io/managed=true); shadow Secrets are written.
RBAC cannot restrict verbs by label, so create/update/delete cover every Secret in scope:
the agent's code only ever writes Secrets it labels getkloak.io/managed=true and owns via an
ownerReference to their source. Narrow the scope with watchNamespaces.
*/}}
{{- define "kloak.controllerSecretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
{{- end -}}

{{/*
The webhook's Secret rule: `get` only (no list, no watch), so it can look at a Secret only by
the name a pod references. It sends metadata-only GETs (PartialObjectMetadata) and never sees a
value, but RBAC has no metadata-only verb: a metadata GET still needs `get`.
*/}}
{{- define "kloak.webhookSecretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end -}}

{{/* Who runs certgen: the hook Job's account and/or the webhook pods (init container). */}}
{{- define "kloak.certgenSubjects" -}}
{{- if include "kloak.certgenHook" . }}
- kind: ServiceAccount
  name: {{ include "kloak.certgen.name" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
{{- if include "kloak.certgenInit" . }}
- kind: ServiceAccount
  name: {{ include "kloak.webhook.name" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
{{- end -}}
