{{/* The chart's name. */}}
{{- define "telemeter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-<chart> unless the release name holds the chart's. */}}
{{- define "telemeter.fullname" -}}
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

{{- define "telemeter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "telemeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The server pods' selector. */}}
{{- define "telemeter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "telemeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "telemeter.clientSelectorLabels" -}}
app.kubernetes.io/name: {{ include "telemeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: client
{{- end }}

{{- define "telemeter.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "telemeter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "telemeter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "telemeter.signingKeySecret" -}}
{{- default (printf "%s-signing-key" (include "telemeter.fullname" .)) .Values.signingKey.existingSecret }}
{{- end }}

{{- define "telemeter.redisSecret" -}}
{{- default (printf "%s-redis" (include "telemeter.fullname" .)) .Values.redis.existingSecret }}
{{- end }}

{{- define "telemeter.clientSecret" -}}
{{- default (printf "%s-client" (include "telemeter.fullname" .)) .Values.client.existingSecret }}
{{- end }}

{{/* Ports and paths fixed by the server (its flags and routes). */}}
{{- define "telemeter.signingKeyDir" -}}/etc/telemeter/signing-key{{- end }}
{{- define "telemeter.verifyKeyDir" -}}/etc/telemeter/verify-keys{{- end }}
{{- define "telemeter.forwardDir" -}}/etc/telemeter/forward{{- end }}
{{- define "telemeter.tlsDir" -}}/etc/telemeter/tls{{- end }}
{{- define "telemeter.redisDir" -}}/etc/telemeter/redis{{- end }}

{{/* The shortest grace period that lets a pod release its ring leases and drain. */}}
{{- define "telemeter.minimumGrace" -}}
{{- add (int .Values.server.preStopSleepSeconds) (int (ceil .Values.server.ring.leaseSeconds)) 5 }}
{{- end }}
