{{/*
Names, labels and small shared snippets. Every name is truncated to 63 characters (the DNS-label
limit of Kubernetes names and label values) with any trailing "-" trimmed.
*/}}

{{- define "qwen3-trainer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped prefix; the release name alone when it already contains the chart name. */}}
{{- define "qwen3-trainer.fullname" -}}
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

{{/* <fullname>-<component>, truncated so the suffix always survives. */}}
{{- define "qwen3-trainer.componentName" -}}
{{- $suffix := printf "-%s" .component }}
{{- printf "%s%s" (include "qwen3-trainer.fullname" .ctx | trunc (int (sub 63 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "qwen3-trainer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qwen3-trainer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwen3-trainer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "qwen3-trainer.labels" -}}
helm.sh/chart: {{ include "qwen3-trainer.chart" . }}
{{ include "qwen3-trainer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qwen3-trainer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: call with (dict "ctx" $ "component" "mlflow"). */}}
{{- define "qwen3-trainer.componentLabels" -}}
{{ include "qwen3-trainer.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "qwen3-trainer.componentSelectorLabels" -}}
{{ include "qwen3-trainer.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* "repository:tag", the tag defaulting to the chart's appVersion: (dict "image" .Values.x.image "ctx" $). */}}
{{- define "qwen3-trainer.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "qwen3-trainer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qwen3-trainer.componentName" (dict "ctx" . "component" "worker")) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "qwen3-trainer.workloadServiceAccountName" -}}
{{- if .Values.workloadServiceAccount.create }}
{{- default (include "qwen3-trainer.componentName" (dict "ctx" . "component" "workload")) .Values.workloadServiceAccount.name }}
{{- else }}
{{- required "workloadServiceAccount.name is required when workloadServiceAccount.create is false" .Values.workloadServiceAccount.name }}
{{- end }}
{{- end }}

{{/* The TrainingRuntime the chart installs for TrainJobs (templates/jobs/trainingruntime.yaml). */}}
{{- define "qwen3-trainer.trainingRuntimeName" -}}
{{- include "qwen3-trainer.componentName" (dict "ctx" . "component" "torch") }}
{{- end }}

{{/* Pod-level securityContext: the chart default merged under a component override. */}}
{{- define "qwen3-trainer.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (default dict .override)) }}
{{- end }}

{{- define "qwen3-trainer.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{- define "qwen3-trainer.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* ---- S3 ---- */}}

{{/* The Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or "" under workload identity. */}}
{{- define "qwen3-trainer.s3SecretName" -}}
{{- if .Values.objectStore.enabled }}
{{- default (include "qwen3-trainer.componentName" (dict "ctx" . "component" "object-store")) .Values.objectStore.existingSecret }}
{{- else if eq .Values.s3.auth "secret" }}
{{- .Values.s3.credentialsSecret }}
{{- end }}
{{- end }}

{{- define "qwen3-trainer.s3Endpoint" -}}
{{- if .Values.objectStore.enabled }}
{{- printf "http://%s:%d" (include "qwen3-trainer.componentName" (dict "ctx" . "component" "object-store")) (int .Values.objectStore.service.port) }}
{{- else }}
{{- .Values.s3.endpointUrl }}
{{- end }}
{{- end }}

{{/* Env entries every S3 client gets: region, endpoint, and keys only through secretKeyRef. */}}
{{- define "qwen3-trainer.s3Env" -}}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- with include "qwen3-trainer.s3Endpoint" . }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with include "qwen3-trainer.s3SecretName" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}

{{/* ---- databases ---- */}}

{{- define "qwen3-trainer.postgresqlName" -}}
{{- include "qwen3-trainer.componentName" (dict "ctx" . "component" "postgresql") }}
{{- end }}

{{- define "qwen3-trainer.postgresqlSecretName" -}}
{{- default (include "qwen3-trainer.postgresqlName" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/* Which store backs a component: "external", "postgresql" (bundled) or "sqlite". */}}
{{- define "qwen3-trainer.databaseKind" -}}
{{- if .external.secretName }}external{{- else if .ctx.Values.postgresql.enabled }}postgresql{{- else }}sqlite{{- end }}
{{- end }}

{{- define "qwen3-trainer.prefectApiUrl" -}}
{{- if .Values.prefect.server.enabled }}
{{- printf "http://%s:%d/api" (include "qwen3-trainer.componentName" (dict "ctx" . "component" "prefect-server")) (int .Values.prefect.server.service.port) }}
{{- else }}
{{- required "prefect.worker.apiUrl is required when prefect.server.enabled is false" .Values.prefect.worker.apiUrl }}
{{- end }}
{{- end }}

{{- define "qwen3-trainer.mlflowUrl" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s:%d" (include "qwen3-trainer.componentName" (dict "ctx" . "component" "mlflow")) (int .Values.mlflow.service.port) }}
{{- else }}
{{- .Values.mlflow.externalTrackingUri }}
{{- end }}
{{- end }}
