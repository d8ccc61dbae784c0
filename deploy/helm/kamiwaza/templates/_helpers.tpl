{{/* Names and labels. */}}
{{- define "kamiwaza.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kamiwaza.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kamiwaza.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kamiwaza.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kamiwaza.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kamiwaza.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kamiwaza.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kamiwaza.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where things are mounted (the gateway's config names the same paths). */}}
{{- define "kamiwaza.configDir" -}}/etc/kamiwaza/config{{- end -}}
{{- define "kamiwaza.bundleDir" -}}/etc/kamiwaza/bundle{{- end -}}
{{- define "kamiwaza.tokenDir" -}}/var/run/kamiwaza/bundle-token{{- end -}}
{{- define "kamiwaza.keysDir" -}}/etc/kamiwaza/keys{{- end -}}
{{- define "kamiwaza.decisionLogDir" -}}/run/kamiwaza/decision-logs{{- end -}}
{{- define "kamiwaza.decisionLogToken" -}}{{ include "kamiwaza.decisionLogDir" . }}/token{{- end -}}

{{/* The bundle's URL: bundle.url, or the ConfigMap's file in the OPA container. */}}
{{- define "kamiwaza.bundleUrl" -}}
{{- if .Values.bundle.url -}}
{{- .Values.bundle.url -}}
{{- else -}}
{{- printf "file://%s/%s" (include "kamiwaza.bundleDir" .) .Values.bundle.configMap.key -}}
{{- end -}}
{{- end -}}

{{- define "kamiwaza.bundleScheme" -}}
{{- (urlParse (include "kamiwaza.bundleUrl" .)).scheme -}}
{{- end -}}

{{/* bundle.credentials, or the scheme's default (gateway/policy_source.py). */}}
{{- define "kamiwaza.bundleCredentials" -}}
{{- $scheme := include "kamiwaza.bundleScheme" . -}}
{{- if .Values.bundle.credentials -}}
{{- .Values.bundle.credentials -}}
{{- else if eq $scheme "s3" -}}environment
{{- else if eq $scheme "gs" -}}gcp_metadata
{{- else -}}none
{{- end -}}
{{- end -}}

{{- define "kamiwaza.bundleConfigMapName" -}}
{{- default (printf "%s-policy-bundle" (include "kamiwaza.fullname" .)) .Values.bundle.configMap.name -}}
{{- end -}}

{{/*
OPA's configuration for pulling the bundle: the same document as
gateway/policy_source.py's opa_bundle_config() for the same settings
(tests/test_helm_chart.py checks that they agree).
*/}}
{{- define "kamiwaza.opaConfig" -}}
{{- $b := .Values.bundle -}}
{{- $url := include "kamiwaza.bundleUrl" . -}}
{{- $parts := urlParse $url -}}
{{- $scheme := $parts.scheme -}}
{{- $cred := include "kamiwaza.bundleCredentials" . -}}
{{- $endpoint := trimSuffix "/" $b.endpointUrl -}}
{{- $key := trimPrefix "/" $parts.path -}}
{{- $polling := dict "min_delay_seconds" (int $b.polling.minDelaySeconds) "max_delay_seconds" (int $b.polling.maxDelaySeconds) -}}
{{- $bundle := dict "persist" $b.persist "polling" $polling -}}
{{- $config := dict "bundles" (dict "kamiwaza" $bundle) "status" (dict "prometheus" true) -}}
{{- if eq $scheme "file" -}}
{{- $_ := set $bundle "resource" $url -}}
{{- else -}}
{{- $service := dict -}}
{{- if eq $scheme "s3" -}}
{{- if $endpoint -}}
{{- $_ := set $service "url" (printf "%s/%s" $endpoint $parts.host) -}}
{{- else -}}
{{- $_ := set $service "url" (printf "https://%s.s3.%s.amazonaws.com" $parts.host (default "us-east-1" $b.region)) -}}
{{- end -}}
{{- $signing := dict -}}
{{- if eq $cred "environment" -}}
{{- $_ := set $signing "environment_credentials" dict -}}
{{- else if eq $cred "web_identity" -}}
{{- $_ := set $signing "web_identity_credentials" (dict "aws_region" $b.region) -}}
{{- else if $b.region -}}
{{- $_ := set $signing "metadata_credentials" (dict "aws_region" $b.region) -}}
{{- else -}}
{{- $_ := set $signing "metadata_credentials" dict -}}
{{- end -}}
{{- $_ := set $service "credentials" (dict "s3_signing" $signing) -}}
{{- $_ := set $bundle "resource" $key -}}
{{- else if eq $scheme "gs" -}}
{{- $_ := set $service "url" (printf "%s/storage/v1/b/%s/o" (default "https://storage.googleapis.com" $endpoint) $parts.host) -}}
{{- if eq $cred "gcp_metadata" -}}
{{- $_ := set $service "credentials" (dict "gcp_metadata" (dict "scopes" (list "https://www.googleapis.com/auth/devstorage.read_only"))) -}}
{{- end -}}
{{- $_ := set $bundle "resource" (printf "%s?alt=media" (replace "/" "%2F" $key)) -}}
{{- else -}}
{{- $_ := set $service "url" (printf "%s://%s" $scheme $parts.host) -}}
{{- $_ := set $bundle "resource" (ternary (printf "%s?%s" $key $parts.query) $key (ne $parts.query "")) -}}
{{- end -}}
{{- if eq $cred "token_file" -}}
{{- $_ := set $service "credentials" (dict "bearer" (dict "token_path" (printf "%s/%s" (include "kamiwaza.tokenDir" .) $b.tokenSecret.key))) -}}
{{- end -}}
{{- $_ := set $bundle "service" "kamiwaza-bundles" -}}
{{- $_ := set $config "services" (dict "kamiwaza-bundles" $service) -}}
{{- end -}}
{{- if $b.verification.publicKey -}}
{{- $_ := set $bundle "signing" (dict "keyid" "kamiwaza-bundle") -}}
{{- $_ := set $config "keys" (dict "kamiwaza-bundle" (dict "algorithm" $b.verification.algorithm "key" $b.verification.publicKey)) -}}
{{- end -}}
{{- if $b.persist -}}
{{- $_ := set $config "persistence_directory" .Values.opa.persistenceDirectory -}}
{{- end -}}
{{- if .Values.opa.decisionLogs.enabled -}}
{{- /* observability/decision_log.py: opa_decision_log_config() */ -}}
{{- $audit := dict "url" (printf "http://127.0.0.1:%d/opa" (int .Values.opa.decisionLogs.port)) "credentials" (dict "bearer" (dict "token_path" (include "kamiwaza.decisionLogToken" .))) "response_header_timeout_seconds" 10 -}}
{{- $services := default dict $config.services -}}
{{- $_ := set $services "kamiwaza-audit" $audit -}}
{{- $_ := set $config "services" $services -}}
{{- $reporting := dict "trigger" "immediate" "buffer_type" "event" "buffer_size_limit_events" 10000 "upload_size_limit_bytes" 65536 "min_delay_seconds" 1 "max_delay_seconds" 1 -}}
{{- $_ := set $config "decision_logs" (dict "service" "kamiwaza-audit" "resource" "/logs" "console" false "reporting" $reporting) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The gateway's config.yaml (the settings table of the README). */}}
{{- define "kamiwaza.gatewayConfig" -}}
{{- $b := .Values.bundle -}}
{{- $cfg := dict
  "host" "0.0.0.0"
  "port" (int .Values.gateway.port)
  "log_level" .Values.gateway.logLevel
  "opa_url" (printf "http://127.0.0.1:%d" (int .Values.opa.port))
  "policy_source" "bundle"
  "endpoints" (printf "%s/endpoints.yaml" (include "kamiwaza.configDir" .))
  "audit_dir" "/data/audit"
  "audit_decision_logs" .Values.opa.decisionLogs.enabled
  "drain_timeout_s" .Values.gateway.drainTimeoutSeconds
  "bundle_url" (include "kamiwaza.bundleUrl" .)
  "bundle_credentials" (include "kamiwaza.bundleCredentials" .)
  "bundle_poll_min_s" (int $b.polling.minDelaySeconds)
  "bundle_poll_max_s" (int $b.polling.maxDelaySeconds)
  "bundle_persist" $b.persist
  "bundle_persist_dir" .Values.opa.persistenceDirectory
-}}
{{- if .Values.opa.decisionLogs.enabled -}}
{{- $_ := set $cfg "audit_decision_logs_port" (int .Values.opa.decisionLogs.port) -}}
{{- $_ := set $cfg "audit_decision_logs_token_file" (include "kamiwaza.decisionLogToken" .) -}}
{{- end -}}
{{- if $b.region -}}{{- $_ := set $cfg "bundle_region" $b.region -}}{{- end -}}
{{- if $b.endpointUrl -}}{{- $_ := set $cfg "bundle_endpoint_url" $b.endpointUrl -}}{{- end -}}
{{- if eq (include "kamiwaza.bundleCredentials" .) "token_file" -}}
{{- $_ := set $cfg "bundle_token_file" (printf "%s/%s" (include "kamiwaza.tokenDir" .) $b.tokenSecret.key) -}}
{{- end -}}
{{- if $b.verification.publicKey -}}
{{- $_ := set $cfg "bundle_verification_key" (printf "%s/bundle-key.pem" (include "kamiwaza.configDir" .)) -}}
{{- $_ := set $cfg "bundle_signing_alg" $b.verification.algorithm -}}
{{- end -}}
{{- if .Values.apiKeys.secretName -}}
{{- $_ := set $cfg "keys" (printf "%s/%s" (include "kamiwaza.keysDir" .) .Values.apiKeys.key) -}}
{{- end -}}
{{- if .Values.otlp.endpoint -}}{{- $_ := set $cfg "otlp_endpoint" .Values.otlp.endpoint -}}{{- end -}}
{{- if .Values.otlp.headers -}}{{- $_ := set $cfg "otlp_headers" .Values.otlp.headers -}}{{- end -}}
{{- toYaml (mergeOverwrite $cfg .Values.gateway.config) -}}
{{- end -}}
