{{/* Names and labels. */}}
{{- define "orderflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "orderflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "orderflow.labels" -}}
{{ include "orderflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: orderflow
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "orderflow.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The registry every client uses: ours (in-cluster Service) or the one values name. */}}
{{- define "orderflow.registryUrl" -}}
{{- if .Values.registry.enabled -}}
http://{{ include "orderflow.fullname" . }}-registry:8081
{{- else -}}
{{ required "registry.url is required when registry.enabled is false" .Values.registry.url }}
{{- end -}}
{{- end -}}

{{- define "orderflow.paymentProviderUrl" -}}
{{- if .Values.simulators.enabled -}}
http://{{ include "orderflow.fullname" . }}-payment-simulator:8090
{{- else -}}
{{ required "providers.payment.url is required unless simulators.enabled" .Values.providers.payment.url }}
{{- end -}}
{{- end -}}

{{- define "orderflow.notificationProviderUrl" -}}
{{- if .Values.simulators.enabled -}}
http://{{ include "orderflow.fullname" . }}-notification-simulator:8091
{{- else -}}
{{ required "providers.notification.url is required unless simulators.enabled" .Values.providers.notification.url }}
{{- end -}}
{{- end -}}

{{/* Whether an optional API group is in use: "true"/"false" force it, "auto" asks the cluster. */}}
{{- define "orderflow.apiEnabled" -}}
{{- $setting := index . 0 -}}{{- $api := index . 1 -}}{{- $root := index . 2 -}}
{{- if eq (toString $setting) "auto" -}}
{{- $root.Capabilities.APIVersions.Has $api -}}
{{- else -}}
{{- eq (toString $setting) "true" -}}
{{- end -}}
{{- end -}}

{{/* The partitions of a consumer group's topics: the fewest, since no replica beyond that gets work on every topic. */}}
{{- define "orderflow.groupPartitions" -}}
{{- $root := index . 0 -}}{{- $topics := index . 1 -}}
{{- $min := 0 -}}
{{- range $topics -}}
{{- $p := int (index $root.Values.topics .).partitions -}}
{{- if or (eq $min 0) (lt $p $min) -}}{{- $min = $p -}}{{- end -}}
{{- end -}}
{{- $min -}}
{{- end -}}

{{/*
Every workload the chart runs, as a YAML list: what differs between them (program, ports,
probes, database key, what it reaches). deployment.yaml, service.yaml, pdb.yaml,
networkpolicy.yaml and servicemonitor.yaml all read this one list.
*/}}
{{- define "orderflow.workloads" -}}
{{- $v := .Values -}}
{{- $registry := include "orderflow.registryUrl" . -}}
{{- if $v.registry.enabled }}
- name: registry
  command: [orderflow-registry]
  replicas: {{ $v.registry.replicas }}
  resources: {{ toJson $v.registry.resources }}
  pdb: {{ toJson $v.registry.pdb }}
  database: registry
  ports: [{name: http, port: 8081}]
  service: {port: 8081}
  probes: {port: http, live: /healthz, ready: /healthz}
  metricsPort: http
  reaches: [database]
  ingressFrom: [orderflow]
  secretFiles: {{ include "orderflow.registryCredentials" (list . "users") | fromYamlArray | toJson }}
  env:
    ORDERFLOW_REGISTRY_LISTEN: "0.0.0.0:8081"
    ORDERFLOW_REGISTRY_DEFAULT_COMPATIBILITY: {{ $v.registry.defaultCompatibility | quote }}
    ORDERFLOW_REGISTRY_ANONYMOUS_READS: {{ $v.registry.auth.anonymousReads | quote }}
{{- end }}
- name: order-api
  command: [order-api]
  replicas: {{ $v.orderApi.replicas }}
  resources: {{ toJson $v.orderApi.resources }}
  pdb: {{ toJson $v.orderApi.pdb }}
  database: orders
  ports: [{name: http, port: 8080}]
  service: {port: {{ $v.orderApi.service.port }}, type: {{ $v.orderApi.service.type }}}
  probes: {port: http, live: /healthz, ready: /readyz}
  metricsPort: http
  {{- $auth := $v.orderApi.auth }}
  reaches: [database, registry{{ if $auth.jwksUrl }}, jwks{{ end }}]
  ingressFrom: [apiClients]
  {{- if and $auth.jwksUrl $auth.jwksConfigMap }}
  {{- fail "orderApi.auth: set jwksUrl or jwksConfigMap, not both" }}
  {{- else if $auth.jwksConfigMap }}
  configMapMounts: [{name: jwks, configMap: {{ $auth.jwksConfigMap | quote }}, mountPath: /etc/orderflow/jwks}]
  {{- else if not $auth.jwksUrl }}
  {{- fail "orderApi.auth.jwksUrl or orderApi.auth.jwksConfigMap is required: where the token issuer's public keys (JWKS) are" }}
  {{- end }}
  env:
    ORDERFLOW_API_JWT_ISSUER: {{ required "orderApi.auth.issuer is required: the token issuer (iss) order-api trusts" $auth.issuer | quote }}
    ORDERFLOW_API_JWT_AUDIENCE: {{ join "," $auth.audiences | quote }}
    ORDERFLOW_API_JWT_LEEWAY_SECS: {{ $auth.leewaySeconds | quote }}
    ORDERFLOW_API_JWKS_REFRESH_SECS: {{ $auth.refreshSeconds | quote }}
    {{- if $auth.jwksUrl }}
    ORDERFLOW_API_JWKS_URL: {{ $auth.jwksUrl | quote }}
    {{- else }}
    ORDERFLOW_API_JWKS_FILE: /etc/orderflow/jwks/jwks.json
    {{- end }}
    ORDERFLOW_API_RATE_LIMIT_CALLERS: {{ $v.orderApi.rateLimitCallers | quote }}
    ORDERFLOW_API_LISTEN: "0.0.0.0:8080"
    ORDERFLOW_API_CLIENT_RATE: {{ $v.orderApi.clientRate | quote }}
    ORDERFLOW_API_CLIENT_BURST: {{ $v.orderApi.clientBurst | quote }}
    ORDERFLOW_API_DB_POOL: {{ $v.orderApi.dbPool | quote }}
    ORDERFLOW_API_MAX_WAITERS: {{ $v.orderApi.maxWaiters | quote }}
{{- range $outbox := list "orders" "payments" "inventory" }}
- name: relay-{{ $outbox }}
  command: [outbox-relay]
  replicas: {{ $v.relays.replicas }}
  resources: {{ toJson $v.relays.resources }}
  pdb: {{ toJson $v.relays.pdb }}
  database: {{ $outbox }}
  ports: [{name: metrics, port: 9100}]
  probes: {port: metrics, live: /healthz, ready: /healthz}
  metricsPort: metrics
  reaches: {{ if eq $v.outbox.publisher "relay" }}[database, kafka]{{ else }}[database]{{ end }}
  env:
    ORDERFLOW_METRICS_LISTEN: "0.0.0.0:9100"
    ORDERFLOW_OUTBOX_NAME: {{ $outbox }}
    ORDERFLOW_RELAY_MODE: {{ if eq $v.outbox.publisher "relay" }}publish{{ else }}prune{{ end }}
    ORDERFLOW_RELAY_BATCH: {{ $v.relays.batchSize | quote }}
    ORDERFLOW_RELAY_PRUNE_AFTER_SECS: {{ $v.outbox.pruneAfterSeconds | quote }}
    ORDERFLOW_RELAY_ENSURE_TOPICS: {{ printf "orders:%d,payments:%d" (int $v.topics.orders.partitions) (int $v.topics.payments.partitions) | quote }}
{{- end }}
{{- $consumers := list
  (dict "key" "payment" "name" "payment" "group" "payment" "topics" (list "orders") "database" "payments" "provider" "payment")
  (dict "key" "orderService" "name" "order-service" "group" "order-service" "topics" (list "payments" "orders") "database" "orders")
  (dict "key" "inventory" "name" "inventory" "group" "inventory" "topics" (list "orders") "database" "inventory")
  (dict "key" "notifications" "name" "notifications" "group" "notifications" "topics" (list "orders") "database" "notifications" "provider" "notification")
  (dict "key" "analytics" "name" "analytics" "group" "analytics" "topics" (list "orders") "database" "analytics" "api" true)
}}
{{- range $c := $consumers }}
{{- $cv := index $v.consumers $c.key }}
{{- $port := ternary 8082 9100 (hasKey $c "api") }}
- name: {{ $c.name }}
  command: [{{ $c.name }}]
  replicas: {{ $cv.replicas }}
  resources: {{ toJson $cv.resources }}
  pdb: {{ toJson $v.consumers.pdb }}
  database: {{ $c.database }}
  ports: [{name: {{ ternary "http" "metrics" (hasKey $c "api") }}, port: {{ $port }}}]
  {{- if hasKey $c "api" }}
  service: {port: 8082}
  {{- end }}
  probes: {port: {{ ternary "http" "metrics" (hasKey $c "api") }}, live: /healthz, ready: /readyz}
  metricsPort: {{ ternary "http" "metrics" (hasKey $c "api") }}
  reaches: [database, kafka, registry{{ if hasKey $c "provider" }}, {{ $c.provider }}Provider{{ end }}]
  {{- if hasKey $c "api" }}
  ingressFrom: [prometheus]
  {{- end }}
  {{- $files := list }}
  {{- if eq $c.name "payment" }}
  {{- with $v.providers.payment.apiKeySecret }}{{ if .name }}{{ $files = append $files (dict "env" "ORDERFLOW_PROVIDER_API_KEY_FILE" "secret" .name "key" .key) }}{{ end }}{{ end }}
  {{- with $v.providers.payment.caSecret }}{{ if .name }}{{ $files = append $files (dict "env" "ORDERFLOW_PROVIDER_CA_CERT" "secret" .name "key" .key) }}{{ end }}{{ end }}
  {{- end }}
  {{- if eq $c.name "notifications" }}
  {{- with $v.providers.notification.caSecret }}{{ if .name }}{{ $files = append $files (dict "env" "ORDERFLOW_NOTIFY_PROVIDER_CA_CERT" "secret" .name "key" .key) }}{{ end }}{{ end }}
  {{- end }}
  {{- if $files }}
  secretFiles: {{ toJson $files }}
  {{- end }}
  consumer:
    group: {{ $c.group }}
    topics: {{ toJson $c.topics }}
    minReplicas: {{ $cv.minReplicas }}
    maxReplicas: {{ $cv.maxReplicas | default (include "orderflow.groupPartitions" (list $ $c.topics)) }}
  env:
    {{- if hasKey $c "api" }}
    ORDERFLOW_ANALYTICS_LISTEN: "0.0.0.0:8082"
    {{- else }}
    ORDERFLOW_METRICS_LISTEN: "0.0.0.0:9100"
    {{- end }}
    ORDERFLOW_KAFKA_PARTITIONS: {{ include "orderflow.groupPartitions" (list $ $c.topics) | quote }}
    {{- $ordering := $cv.ordering | default (ternary "key" "partition" (has $c.name (list "payment" "notifications"))) }}
    {{- if and (eq ($cv.retryMode | default "topic") "quarantine") (ne $ordering "key") }}
    {{- fail (printf "consumers.%s: retryMode quarantine needs ordering key (it is %s)" $c.key $ordering) }}
    {{- end }}
    {{- with $cv.ordering }}
    ORDERFLOW_ORDERING: {{ . | quote }}
    {{- end }}
    {{- with $cv.retryMode }}
    ORDERFLOW_RETRY_MODE: {{ . | quote }}
    {{- end }}
    {{- with $cv.quarantineAfterDeadLetter }}
    ORDERFLOW_QUARANTINE_AFTER_DEAD_LETTER: {{ . | quote }}
    {{- end }}
    {{- if eq $c.name "payment" }}
    ORDERFLOW_PROVIDER_URL: {{ include "orderflow.paymentProviderUrl" $ | quote }}
    ORDERFLOW_PROVIDER_RATE_LIMIT: {{ $v.providers.payment.rateLimitPerSecond | quote }}
    ORDERFLOW_PROVIDER_TIMEOUT_MS: {{ $v.providers.payment.timeoutMs | quote }}
    {{- end }}
    {{- if eq $c.name "notifications" }}
    ORDERFLOW_NOTIFY_PROVIDER_URL: {{ include "orderflow.notificationProviderUrl" $ | quote }}
    ORDERFLOW_NOTIFY_PROVIDER_TIMEOUT_MS: {{ $v.providers.notification.timeoutMs | quote }}
    {{- end }}
{{- end }}
- name: lag-exporter
  command: [lag-exporter]
  replicas: {{ $v.lagExporter.replicas }}
  resources: {{ toJson $v.lagExporter.resources }}
  ports: [{name: metrics, port: 9100}]
  probes: {port: metrics, live: /healthz, ready: /readyz}
  metricsPort: metrics
  reaches: [kafka]
  env:
    ORDERFLOW_METRICS_LISTEN: "0.0.0.0:9100"
    ORDERFLOW_LAG_INTERVAL_SECS: {{ $v.lagExporter.intervalSeconds | quote }}
    ORDERFLOW_LAG_GROUPS: payment,order-service,inventory,notifications,analytics
- name: console
  command: [orderflow-console]
  replicas: {{ $v.console.replicas }}
  resources: {{ toJson $v.console.resources }}
  reads: [orders, payments, inventory, notifications, analytics]
  {{- with $v.console.operatorsSecret }}{{ if .name }}
  secretFiles: [{env: ORDERFLOW_CONSOLE_OPERATORS_FILE, secret: {{ .name }}, key: {{ .key }}}]
  {{- end }}{{ end }}
  ports: [{name: http, port: 8070}]
  service: {port: {{ $v.console.service.port }}}
  probes: {port: http, live: /healthz, ready: /readyz}
  metricsPort: http
  reaches: [database, kafka, registry]
  ingressFrom: [operators]
  env:
    ORDERFLOW_CONSOLE_LISTEN: "0.0.0.0:8070"
    ORDERFLOW_CONSOLE_INTERVAL_SECS: {{ $v.console.intervalSeconds | quote }}
    ORDERFLOW_LAG_GROUPS: payment,order-service,inventory,notifications,analytics
    {{- with $v.console.traceUrl }}
    ORDERFLOW_CONSOLE_TRACE_URL: {{ . | quote }}
    {{- end }}
{{- if $v.simulators.enabled }}
- name: payment-simulator
  command: [payment-simulator]
  replicas: 1
  resources: {{ toJson $v.simulators.resources }}
  database: paymentSimulator
  ports: [{name: http, port: 8090}, {name: admin, port: 8089}]
  service: {port: 8090, extraPorts: [{name: admin, port: 8089}]}
  probes: {port: http, live: /healthz, ready: /healthz}
  reaches: [database]
  ingressFrom: [payment]
  {{- with $v.providers.payment.apiKeySecret }}{{ if .name }}
  secretFiles: [{env: ORDERFLOW_SIMULATOR_API_KEY_FILE, secret: {{ .name }}, key: {{ .key }}}]
  {{- end }}{{ end }}
  env:
    ORDERFLOW_SIMULATOR_LISTEN: "0.0.0.0:8090"
    ORDERFLOW_SIMULATOR_ADMIN_LISTEN: "0.0.0.0:8089"
- name: notification-simulator
  command: [notification-simulator]
  replicas: 1
  resources: {{ toJson $v.simulators.resources }}
  database: notificationSimulator
  ports: [{name: http, port: 8091}, {name: admin, port: 8092}]
  service: {port: 8091, extraPorts: [{name: admin, port: 8092}]}
  probes: {port: http, live: /healthz, ready: /healthz}
  reaches: [database]
  ingressFrom: [notifications]
  env:
    ORDERFLOW_NOTIFY_SIMULATOR_LISTEN: "0.0.0.0:8091"
    ORDERFLOW_NOTIFY_SIMULATOR_ADMIN_LISTEN: "0.0.0.0:8092"
{{- end }}
{{- end -}}

{{/* Environment every orderflow container shares (inline, so hook Jobs need no ConfigMap). */}}
{{- define "orderflow.commonEnv" -}}
- name: ORDERFLOW_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required (host:port of your brokers)" .Values.kafka.bootstrap | quote }}
- name: ORDERFLOW_KAFKA_REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | quote }}
- name: ORDERFLOW_REGISTRY_URL
  value: {{ include "orderflow.registryUrl" . | quote }}
- name: ORDERFLOW_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- include "orderflow.postgresEnv" . }}
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
{{- end }}
{{- end -}}

{{/* libpq's TLS mode for every Postgres connection (its CA comes with the secret files). */}}
{{- define "orderflow.postgresEnv" -}}
{{- with .Values.database.tls.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The env var a database key is read from by the services. */}}
{{- define "orderflow.databaseEnv" -}}
{{- $names := dict "orders" "ORDERFLOW_ORDERS_DATABASE_URL" "payments" "ORDERFLOW_PAYMENTS_DATABASE_URL" "inventory" "ORDERFLOW_INVENTORY_DATABASE_URL" "notifications" "ORDERFLOW_NOTIFICATIONS_DATABASE_URL" "analytics" "ORDERFLOW_ANALYTICS_DATABASE_URL" "registry" "ORDERFLOW_REGISTRY_DATABASE_URL" "paymentSimulator" "ORDERFLOW_SIMULATOR_DATABASE_URL" "notificationSimulator" "ORDERFLOW_NOTIFY_SIMULATOR_DATABASE_URL" -}}
{{- index $names . -}}
{{- end -}}

{{/*
Secrets reach a program as files, never through its environment (where `kubectl describe`,
crash dumps and child processes see them): a projected volume of the Secret keys a container
needs, and `<SETTING>_FILE` naming each file (every orderflow setting reads a `_FILE`).
orderflow.secretFiles (list $root $databases $extra) lists one container's files as
{env, secret, key}: its databases ({env, database}) and their CA when set, the Kafka properties
when set, and $extra.
*/}}
{{- define "orderflow.secretFiles" -}}
{{- $root := index . 0 -}}{{- $v := $root.Values -}}
{{- range (index . 1) }}
- env: {{ .env }}_FILE
  secret: {{ required "database.existingSecret is required: a Secret with one Postgres URL per database" $v.database.existingSecret }}
  key: {{ index $v.database.keys .database }}
{{- end }}
{{- with $v.database.tls.caSecret }}{{ if and .name (index $ 1) }}
- env: PGSSLROOTCERT
  secret: {{ .name }}
  key: {{ .key }}
{{- end }}{{ end }}
{{- if $v.kafka.propertiesSecret.name }}
- env: ORDERFLOW_KAFKA_PROPERTIES_FILE
  secret: {{ $v.kafka.propertiesSecret.name }}
  key: {{ $v.kafka.propertiesSecret.key }}
{{- end }}
{{- range (index . 2) }}
- {{ toJson . }}
{{- end }}
{{- end -}}

{{/* The registry's credentials as files: (list $root "users"|"writer"|"reader"). */}}
{{- define "orderflow.registryCredentials" -}}
{{- $root := index . 0 -}}{{- $who := index . 1 -}}{{- $auth := $root.Values.registry.auth -}}
{{- $secret := required "registry.auth.existingSecret is required: a Secret with the registry's users file and the schema hook's credentials" $auth.existingSecret -}}
{{- if eq $who "users" }}
- {env: ORDERFLOW_REGISTRY_USERS_FILE, secret: {{ $secret }}, key: {{ $auth.usersKey }}}
{{- else if eq $who "writer" }}
- {env: ORDERFLOW_REGISTRY_USER_FILE, secret: {{ $secret }}, key: {{ $auth.userKey }}}
- {env: ORDERFLOW_REGISTRY_PASSWORD_FILE, secret: {{ $secret }}, key: {{ $auth.passwordKey }}}
{{- else }}
- {env: ORDERFLOW_REGISTRY_USER_FILE, secret: {{ $secret }}, key: {{ $auth.readerUserKey }}}
- {env: ORDERFLOW_REGISTRY_PASSWORD_FILE, secret: {{ $secret }}, key: {{ $auth.readerPasswordKey }}}
{{- end }}
{{- end -}}

{{/* A container's env entries for its secret files: (list $volume $files). */}}
{{- define "orderflow.secretFileEnv" -}}
{{- $volume := index . 0 -}}
{{- range (index . 1) }}
- name: {{ .env }}
  value: /etc/orderflow/{{ $volume }}/{{ lower .env }}
{{- end }}
{{- end -}}

{{- define "orderflow.secretFileMount" -}}
{{- if index . 1 }}
- {name: {{ index . 0 }}, mountPath: /etc/orderflow/{{ index . 0 }}, readOnly: true}
{{- end }}
{{- end -}}

{{/* The projected volume behind them, readable by the pod's group only. */}}
{{- define "orderflow.secretFileVolume" -}}
{{- if index . 1 }}
- name: {{ index . 0 }}
  projected:
    defaultMode: 0440
    sources:
      {{- range (index . 1) }}
      - secret:
          name: {{ .secret }}
          items: [{key: {{ .key | quote }}, path: {{ lower .env }}}]
      {{- end }}
{{- end }}
{{- end -}}

{{- define "orderflow.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
