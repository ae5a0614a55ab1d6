{{/* Names: the release name, prefixed with the chart's unless it already says recflow. */}}
{{- define "recflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "recflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "recflow.labels" -}}
{{ include "recflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The project's images (files/images.yaml, a symlink to recflow/images.yaml) unless values override them. */}}
{{- define "recflow.image" -}}
{{- $images := .root.Files.Get "files/images.yaml" | fromYaml -}}
{{- $override := index .root.Values.images .name -}}
{{- $default := index $images .name -}}
{{- if not (or $override $default) -}}
{{- fail (printf "no image %q: files/images.yaml names none and images.%s is empty" .name .name) -}}
{{- end -}}
{{- $override | default $default -}}
{{- end -}}

{{/* The pod-level security context every pod of the chart runs with. */}}
{{- define "recflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container-level security context: read-only root, no privilege, no capability. */}}
{{- define "recflow.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The ServiceAccount of the chart's workloads. */}}
{{- define "recflow.serviceAccountName" -}}
{{- include "recflow.fullname" . -}}
{{- end -}}

{{/* Where the registry URL comes from: the user's Secret, or the chart's Postgres Secret. */}}
{{- define "recflow.registrySecret" -}}
{{- if .Values.featureStore.registry.existingSecret -}}
name: {{ .Values.featureStore.registry.existingSecret }}
key: {{ .Values.featureStore.registry.secretKey }}
{{- else if .Values.postgres.enabled -}}
name: {{ include "recflow.fullname" . }}-postgres
key: url
{{- else -}}
{{- fail "featureStore.registry.existingSecret is required when postgres.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/*
The environment feature_store.yaml expands (FEAST_REGISTRY_URL, REDIS_CONNECTION_STRING),
shared by every pod that opens the feature store.
*/}}
{{- define "recflow.featureStoreEnv" -}}
- name: FEAST_REGISTRY_URL
  valueFrom:
    secretKeyRef:
      {{- include "recflow.registrySecret" . | nindent 6 }}
{{- if .Values.featureStore.onlineStore.existingSecret }}
- name: REDIS_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .Values.featureStore.onlineStore.existingSecret }}
      key: {{ .Values.featureStore.onlineStore.secretKey }}
{{- else if .Values.redis.enabled }}
- name: REDIS_CONNECTION_STRING
  value: {{ include "recflow.redisConnectionString" . | quote }}
{{- else }}
{{- fail "featureStore.onlineStore.existingSecret is required when redis.enabled is false" }}
{{- end }}
{{- with .Values.featureStore.offlineRoot }}
- name: RECFLOW_OFFLINE_ROOT
  value: {{ . | quote }}
{{- end }}
# Feast's usage telemetry would try to reach the internet from inside the cluster.
- name: FEAST_USAGE
  value: "False"
{{- end -}}

{{/* Pod labels that let a pod through the NetworkPolicies around Redis, Postgres and the feature server. */}}
{{- define "recflow.featureStoreClientLabel" -}}
recflow.io/feature-store-client: "true"
{{- end -}}

{{/* The chart's Postgres password: made once, then read back from its Secret on upgrades. */}}
{{- define "recflow.postgresPassword" -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-postgres" (include "recflow.fullname" .)) -}}
{{- if and $existing (index $existing.data "password") -}}
{{- index $existing.data "password" | b64dec -}}
{{- else -}}
{{- /* One value per render: every template that needs it reads this cache. */ -}}
{{- if not (index .Values "__postgresPassword") -}}
{{- $_ := set .Values "__postgresPassword" (randAlphaNum 32) -}}
{{- end -}}
{{- index .Values "__postgresPassword" -}}
{{- end -}}
{{- end -}}

{{/* The SQL registry URL of the chart's Postgres. */}}
{{- define "recflow.registryUrl" -}}
{{- printf "postgresql+psycopg://%s:%s@%s-postgres:%v/%s" .Values.postgres.user (include "recflow.postgresPassword" .) (include "recflow.fullname" .) .Values.postgres.port .Values.postgres.database -}}
{{- end -}}

{{/* The Feast connection string of the chart's Redis. */}}
{{- define "recflow.redisConnectionString" -}}
{{- $address := printf "%s-redis:%v" (include "recflow.fullname" .) .Values.redis.port -}}
{{- compact (list $address .Values.featureStore.onlineStore.options) | join "," -}}
{{- end -}}

{{/*
The feedback loop's services (feedback-loop.yaml), by component name: the key of their
values and the Prometheus job they are scraped under (the local platform's names).
*/}}
{{- define "recflow.feedbackLoop" -}}
feedback: {values: feedback, job: feedback}
drift-monitor: {values: driftMonitor, job: monitor}
{{- end -}}
