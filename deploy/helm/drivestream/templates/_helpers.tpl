{{/* Names and labels. */}}
{{- define "drivestream.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "drivestream.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "serve"). */}}
{{- define "drivestream.selector" -}}
{{- $top := index . 0 -}}
app.kubernetes.io/name: {{ $top.Chart.Name }}
app.kubernetes.io/instance: {{ $top.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "drivestream.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* The serving replica cap: serve.autoscaling.maxReplicas, at most the sensors partitions. */}}
{{- define "drivestream.serveMaxReplicas" -}}
{{- $parts := int .Values.kafka.partitions -}}
{{- $max := int .Values.serve.autoscaling.maxReplicas -}}
{{- if or (le $max 0) (gt $max $parts) -}}{{ $parts }}{{- else -}}{{ $max }}{{- end -}}
{{- end -}}

{{/*
Kafka connection and security variables (schemas.kafka.KafkaSettings.from_env) for every
container; files come from the volumes of "drivestream.kafkaVolumes".
*/}}
{{- define "drivestream.kafkaEnv" -}}
{{- $k := .Values.kafka -}}
- name: DRIVESTREAM_BOOTSTRAP
  value: {{ $k.bootstrap | quote }}
- name: DRIVESTREAM_TOPIC_PREFIX
  value: {{ $k.topicPrefix | quote }}
- name: DRIVESTREAM_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
{{- if hasPrefix "SASL_" $k.securityProtocol }}
- name: DRIVESTREAM_SASL_MECHANISM
  value: {{ required "kafka.sasl.mechanism is required with a SASL_* securityProtocol" $k.sasl.mechanism | quote }}
- name: DRIVESTREAM_SASL_USERNAME
  value: {{ required "kafka.sasl.username is required with a SASL_* securityProtocol" $k.sasl.username | quote }}
- name: DRIVESTREAM_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.passwordSecret.name is required with a SASL_* securityProtocol" $k.sasl.passwordSecret.name }}
      key: {{ $k.sasl.passwordSecret.key }}
{{- end }}
{{- if and (has $k.securityProtocol (list "SSL" "SASL_SSL")) $k.tls.caSecret.name }}
- name: DRIVESTREAM_SSL_CAFILE
  value: /etc/drivestream/kafka-ca/ca.crt
{{- end }}
{{- if and (has $k.securityProtocol (list "SSL" "SASL_SSL")) $k.tls.clientCertSecret.name }}
- name: DRIVESTREAM_SSL_CERTFILE
  value: /etc/drivestream/kafka-client/tls.crt
- name: DRIVESTREAM_SSL_KEYFILE
  value: /etc/drivestream/kafka-client/tls.key
{{- end }}
{{- end -}}

{{- define "drivestream.kafkaVolumeMounts" -}}
{{- $k := .Values.kafka -}}
{{- if and (has $k.securityProtocol (list "SSL" "SASL_SSL")) $k.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/drivestream/kafka-ca
  readOnly: true
{{- end }}
{{- if and (has $k.securityProtocol (list "SSL" "SASL_SSL")) $k.tls.clientCertSecret.name }}
- name: kafka-client
  mountPath: /etc/drivestream/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "drivestream.kafkaVolumes" -}}
{{- $k := .Values.kafka -}}
{{- if and (has $k.securityProtocol (list "SSL" "SASL_SSL")) $k.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $k.tls.caSecret.name }}
    items:
      - key: {{ $k.tls.caSecret.key }}
        path: ca.crt
{{- end }}
{{- if and (has $k.securityProtocol (list "SSL" "SASL_SSL")) $k.tls.clientCertSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $k.tls.clientCertSecret.name }}
    defaultMode: 0400
    items:
      - key: {{ $k.tls.clientCertSecret.certKey }}
        path: tls.crt
      - key: {{ $k.tls.clientCertSecret.keyKey }}
        path: tls.key
{{- end }}
{{- end -}}

{{/* A component's extra `env` map as env entries. */}}
{{- define "drivestream.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Pod scheduling of one component (its values). */}}
{{- define "drivestream.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
