{{/*
"lanner.hubConfig": the hub's configuration from `sidekick.config` (and Falcosidekick's
`falcosidekick.config`), as YAML with
  config: the config file (no secret in it), for the ConfigMap
  env: env name -> value of every credential, for the Secret (the hub reads Falcosidekick's env
       names: SLACK_WEBHOOKURL...; env wins over the file)
  serviceAccountAnnotations: cloud identity (IRSA, GKE Workload Identity)
  existingSecret, extraEnv, notes
Falcosidekick's string forms of lists and maps ("a,b", "k:v,k2:v2") become YAML lists and maps.
*/}}

{{/* Output sections the hub has, and the keys whose value is a list or a map. */}}
{{- define "lanner.hub.listKeys" -}}rules sources tags aggregatefields hostport labelallowlist labeldenylist customtags{{- end -}}
{{- define "lanner.hub.mapKeys" -}}extralabels extraannotations customseveritymap dropeventthresholds customattributes customheaders customfields{{- end -}}
{{/* Credentials: config path -> env name. A path under a section whose key is shared by the
section's siblings (aws.*, gcp.*) is read from the parent's env name only. */}}
{{- define "lanner.hub.secretKeys" -}}
slack.webhookurl: SLACK_WEBHOOKURL
discord.webhookurl: DISCORD_WEBHOOKURL
alertmanager.customheaders: ALERTMANAGER_CUSTOMHEADERS
webhook.address: WEBHOOK_ADDRESS
webhook.customheaders: WEBHOOK_CUSTOMHEADERS
webhook.hmacsecret: WEBHOOK_HMACSECRET
aws.accesskeyid: AWS_ACCESSKEYID
aws.secretaccesskey: AWS_SECRETACCESSKEY
gcp.credentials: GCP_CREDENTIALS
{{- end -}}
{{/* Keys that enable a Falcosidekick output Lanner does not have (then the render fails). */}}
{{- define "lanner.hub.addressKeys" -}}hostport webhookurl address url functionname topicarn loggroup streamname bucket apikey hosts brokers connectionstring accountname{{- end -}}

{{/* "1" somewhere in the output when a value holds anything: a non-empty string, true, a number. */}}
{{- define "lanner.nonEmpty" -}}
{{- if kindIs "map" . -}}
{{- range $_, $v := . }}{{ include "lanner.nonEmpty" $v }}{{ end -}}
{{- else if kindIs "slice" . -}}
{{- range $v := . }}{{ include "lanner.nonEmpty" $v }}{{ end -}}
{{- else if kindIs "bool" . -}}
{{- if . }}1{{ end -}}
{{- else if kindIs "string" . -}}
{{- if . }}1{{ end -}}
{{- else if not (kindIs "invalid" .) -}}
{{- if ne (toString .) "0" }}1{{ end -}}
{{- end -}}
{{- end -}}

{{/* "1" when a Falcosidekick output section (or a sub-section) has an address set. */}}
{{- define "lanner.configuredOutput" -}}
{{- $address := splitList " " (include "lanner.hub.addressKeys" "") -}}
{{- range $k, $v := . -}}
{{- if kindIs "map" $v -}}
{{- include "lanner.configuredOutput" $v -}}
{{- else if and (has $k $address) (include "lanner.nonEmpty" $v) -}}
1
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Falcosidekick's "k:v,k2:v2" (a string) to a map. Call with (dict "value" . "key" "path"). */}}
{{- define "lanner.parseMap" -}}
{{- $out := dict -}}
{{- range $pair := splitList "," .value -}}
{{- $pair = trim $pair -}}
{{- if $pair -}}
{{- $kv := regexSplit ":" $pair 2 -}}
{{- if lt (len $kv) 2 -}}
{{- fail (printf "sidekick.config.%s: %q is not key:value (the form is k:v,k2:v2, or a YAML map)." $.key $pair) -}}
{{- end -}}
{{- $_ := set $out (trim (index $kv 0)) (trim (index $kv 1)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Lists and maps given as strings, in one section (a map), made YAML. */}}
{{- define "lanner.normalizeSection" -}}
{{- $section := .section -}}
{{- $lists := splitList " " (include "lanner.hub.listKeys" "") -}}
{{- $maps := splitList " " (include "lanner.hub.mapKeys" "") -}}
{{- range $k, $v := $section -}}
{{- if and (has $k $lists) (kindIs "string" $v) -}}
{{- $items := list -}}
{{- range $item := splitList "," $v -}}
{{- if trim $item }}{{ $items = append $items (trim $item) }}{{ end -}}
{{- end -}}
{{- $_ := set $section $k $items -}}
{{- else if and (has $k $maps) (kindIs "string" $v) -}}
{{- $_ := set $section $k (include "lanner.parseMap" (dict "value" $v "key" (printf "%s%s" $.prefix $k)) | fromYaml) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "lanner.hubConfig" -}}
{{- $V := .Values -}}
{{- $notes := list -}}
{{- $fsk := $V.falcosidekick | default dict -}}
{{- $cfg := mergeOverwrite (deepCopy ($fsk.config | default dict)) (deepCopy ($V.sidekick.config | default dict)) -}}
{{- $existing := $V.sidekick.existingSecret -}}
{{- $extraEnv := list -}}
{{- $env := dict -}}
{{- $sa := dict -}}
{{- if $fsk.config -}}
{{- $notes = append $notes "falcosidekick.config: read as sidekick.config (the hub's configuration, Falcosidekick's keys)." -}}
{{- end -}}

{{- /* Falcosidekick chart keys that are not hub configuration */ -}}
{{- if hasKey $cfg "existingSecret" -}}
{{- if and (not $existing) $cfg.existingSecret -}}
{{- $existing = $cfg.existingSecret -}}
{{- end -}}
{{- $_ := unset $cfg "existingSecret" -}}
{{- end -}}
{{- if hasKey $cfg "extraEnv" -}}
{{- $extraEnv = $cfg.extraEnv | default list -}}
{{- $_ := unset $cfg "extraEnv" -}}
{{- end -}}
{{- with $cfg.tlsserver -}}
{{- if eq (toString .deploy) "true" -}}
{{- fail "sidekick.config.tlsserver.deploy=true: the hub's HTTP port has no TLS of its own here; terminate TLS at the Ingress (ui.ingress.tls). For the detectors' gRPC, see hub.grpcTls." -}}
{{- end -}}
{{- end -}}
{{- range $k := list "extraArgs" "templatedfields" "bracketreplacer" "outputFieldFormat" "mutualtlsfilespath" "mutualtlsclient" "tlsclient" "tlsserver" -}}
{{- if hasKey $cfg $k -}}
{{- if and (include "lanner.nonEmpty" (index $cfg $k)) (not (has $k (list "tlsserver" "mutualtlsfilespath"))) -}}
{{- $notes = append $notes (printf "sidekick.config.%s (Falcosidekick) has no Lanner equivalent and is not used." $k) -}}
{{- end -}}
{{- $_ := unset $cfg $k -}}
{{- end -}}
{{- end -}}

{{- /* keys the chart sets */ -}}
{{- range $k, $port := dict "listenport" 2801 "grpcport" 5060 -}}
{{- if hasKey $cfg $k -}}
{{- if ne (int (index $cfg $k)) $port -}}
{{- fail (printf "sidekick.config.%s: the chart runs the hub on %d; change the Service's port with hub.service.%s instead." $k $port (ternary "httpPort" "grpcPort" (eq $k "listenport"))) -}}
{{- end -}}
{{- $_ := unset $cfg $k -}}
{{- end -}}
{{- end -}}
{{- range $k, $instead := dict "listenaddress" "(the hub listens on every address of its pod)" "store" "(redis.enabled or externalRedis choose it)" "datadir" "(an emptyDir at /var/lib/lanner)" "replica" "(each pod's name)" "redis" "(use redis.* or externalRedis.url / externalRedis.existingSecret)" -}}
{{- if hasKey $cfg $k -}}
{{- fail (printf "sidekick.config.%s is set by the chart %s: remove it." $k $instead) -}}
{{- end -}}
{{- end -}}
{{- if and (kindIs "map" $cfg.grpc) (hasKey $cfg.grpc "token") -}}
{{- fail "sidekick.config.grpc.token: the chart generates the detectors' token; give your own with hub.grpcToken.existingSecret (a Secret, not a value)." -}}
{{- end -}}
{{- if kindIs "map" $cfg.grpc -}}
{{- range $k := list "certfile" "keyfile" "cacertfile" -}}
{{- if hasKey $cfg.grpc $k -}}
{{- fail (printf "sidekick.config.grpc.%s: the chart sets the hub's gRPC TLS files, and gives the detectors the CA and their certificate to match; use hub.grpcTls (enabled, secretName: a kubernetes.io/tls Secret; clientAuth for mutual TLS) instead." $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (kindIs "map" $cfg.ui) (hasKey $cfg.ui "token") -}}
{{- fail "sidekick.config.ui.token: set ui.auth.token or ui.auth.existingSecret instead (the chart puts the token in a Secret)." -}}
{{- end -}}

{{- /* top-level keys: the hub's own, its outputs, or Falcosidekick outputs Lanner does not have */ -}}
{{- $hubKeys := list "debug" "publicurl" "dedupwindow" "bodylimit" "customfields" "customtags" "grpc" "retention" "delivery" "ui" -}}
{{- $outputs := list "slack" "discord" "alertmanager" "webhook" "aws" "gcp" -}}
{{- range $k, $v := deepCopy $cfg -}}
{{- if not (or (has $k $hubKeys) (has $k $outputs)) -}}
{{- if kindIs "map" $v -}}
{{- if include "lanner.configuredOutput" $v -}}
{{- fail (printf "sidekick.config.%s: Lanner has no %s output. Its outputs: slack, discord, alertmanager, aws.sqs, aws.s3, gcp.pubsub, webhook (the webhook output posts Falco's JSON to any URL). Remove %s or leave its address empty." $k $k $k) -}}
{{- end -}}
{{- $_ := unset $cfg $k -}}
{{- else if kindIs "invalid" $v -}}
{{- $_ := unset $cfg $k -}}
{{- else -}}
{{- fail (printf "sidekick.config.%s is not a hub key (docs/configuration.md lists them)." $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $k := $outputs -}}
{{- if and (hasKey $cfg $k) (not (kindIs "map" (index $cfg $k))) -}}
{{- if include "lanner.nonEmpty" (index $cfg $k) -}}
{{- fail (printf "sidekick.config.%s must be a map of the output's keys." $k) -}}
{{- end -}}
{{- $_ := unset $cfg $k -}}
{{- end -}}
{{- end -}}

{{- /* aws: IRSA as Falcosidekick's chart does it, only sqs and s3 */ -}}
{{- with $cfg.aws -}}
{{- $useirsa := not (and (hasKey . "useirsa") (eq (toString .useirsa) "false")) -}}
{{- $_ := unset . "useirsa" -}}
{{- if and $useirsa .rolearn -}}
{{- $_ := set $sa "eks.amazonaws.com/role-arn" (toString .rolearn) -}}
{{- $_ := unset . "rolearn" -}}
{{- $_ := unset . "externalid" -}}
{{- $notes = append $notes "sidekick.config.aws.rolearn: put on the hub's ServiceAccount (IRSA, eks.amazonaws.com/role-arn), as Falcosidekick's chart does while aws.useirsa is true (its default). aws.useirsa=false makes the hub assume the role instead." -}}
{{- end -}}
{{- range $sub, $v := deepCopy . -}}
{{- if and (kindIs "map" $v) (not (has $sub (list "sqs" "s3"))) -}}
{{- if include "lanner.configuredOutput" $v -}}
{{- fail (printf "sidekick.config.aws.%s: Lanner has no AWS %s output; its AWS outputs are aws.sqs and aws.s3." $sub $sub) -}}
{{- end -}}
{{- $_ := unset $cfg.aws $sub -}}
{{- end -}}
{{- end -}}
{{- range $sub := list "sqs" "s3" -}}
{{- $section := index $cfg.aws $sub -}}
{{- if kindIs "map" $section -}}
{{- range $key := list "accesskeyid" "secretaccesskey" -}}
{{- if index $section $key -}}
{{- fail (printf "sidekick.config.aws.%s.%s: give AWS credentials once, under sidekick.config.aws (shared by sqs and s3), so that they go to the Secret; or use IRSA (aws.rolearn)." $sub $key) -}}
{{- end -}}
{{- $_ := unset $section $key -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* gcp: Workload Identity, only pubsub */ -}}
{{- with $cfg.gcp -}}
{{- if .workloadIdentityServiceAccount -}}
{{- $_ := set $sa "iam.gke.io/gcp-service-account" (toString .workloadIdentityServiceAccount) -}}
{{- end -}}
{{- $_ := unset . "workloadIdentityServiceAccount" -}}
{{- range $sub, $v := deepCopy . -}}
{{- if and (kindIs "map" $v) (ne $sub "pubsub") -}}
{{- if include "lanner.configuredOutput" $v -}}
{{- fail (printf "sidekick.config.gcp.%s: Lanner has no GCP %s output; its GCP output is gcp.pubsub." $sub $sub) -}}
{{- end -}}
{{- $_ := unset $cfg.gcp $sub -}}
{{- end -}}
{{- end -}}
{{- if and (kindIs "map" .pubsub) .pubsub.credentials -}}
{{- fail "sidekick.config.gcp.pubsub.credentials: give the credentials under sidekick.config.gcp.credentials (shared by the GCP outputs), so that they go to the Secret; or use Workload Identity (gcp.workloadIdentityServiceAccount)." -}}
{{- end -}}
{{- if kindIs "map" .pubsub -}}
{{- $_ := unset .pubsub "credentials" -}}
{{- end -}}
{{- end -}}

{{- /* alertmanager: Falcosidekick's default endpoint is the v1 API, gone from Alertmanager */ -}}
{{- with $cfg.alertmanager -}}
{{- if eq (toString .endpoint) "/api/v1/alerts" -}}
{{- $_ := set . "endpoint" "/api/v2/alerts" -}}
{{- $notes = append $notes "sidekick.config.alertmanager.endpoint=/api/v1/alerts (Falcosidekick's default) read as /api/v2/alerts: Alertmanager removed the v1 API in 0.27; v2 takes the same alerts." -}}
{{- end -}}
{{- end -}}

{{- /* slack: Falcosidekick's Go templates to the hub's Jinja */ -}}
{{- with $cfg.slack -}}
{{- $mf := toString (.messageformat | default "") -}}
{{- if regexMatch "\\{\\{-?\\s*(\\.|\\$|index\\s|(if|range|with|else|end|printf|len|template|define|block)\\b)" $mf -}}
{{- $jinja := regexReplaceAll "\\{\\{(-?)\\s*index\\s+\\.([A-Za-z_][A-Za-z0-9_]*)\\s+\"([^\"]*)\"\\s*(-?)\\}\\}" $mf "{{${1} ${2}[\"${3}\"] ${4}}}" -}}
{{- $jinja = regexReplaceAll "\\{\\{(-?)\\s*\\.([A-Za-z_][A-Za-z0-9_]*)\\s*(-?)\\}\\}" $jinja "{{${1} ${2} ${3}}}" -}}
{{- if or (regexMatch "\\{\\{-?\\s*(\\.|\\$|index\\s|(if|range|with|else|end|printf|len|template|define|block)\\b)" $jinja) (regexMatch "\\{\\{[^}]*\\|[^}]*\\}\\}" $jinja) -}}
{{- fail (printf "sidekick.config.slack.messageformat is a Go template (Falcosidekick's) that the chart cannot convert: %q. The hub's templates are Jinja; the chart converts {{ .Rule }} and {{ index .OutputFields \"user.name\" }} by itself, anything else write as Jinja: {{ Rule }}, {{ OutputFields[\"user.name\"] }}, {%% if ... %%}." $mf) -}}
{{- end -}}
{{- $_ := set . "messageformat" $jinja -}}
{{- $notes = append $notes (printf "sidekick.config.slack.messageformat: Falcosidekick's Go template converted to the hub's Jinja: %s" $jinja) -}}
{{- end -}}
{{- end -}}

{{- /* credentials -> env (the Secret) */ -}}
{{- range $path, $name := include "lanner.hub.secretKeys" . | fromYaml -}}
{{- $parts := splitList "." $path -}}
{{- $section := index $cfg (first $parts) -}}
{{- $key := last $parts -}}
{{- if and (kindIs "map" $section) (hasKey $section $key) -}}
{{- $v := index $section $key -}}
{{- if kindIs "map" $v -}}
{{- $pairs := list -}}
{{- range $hk := keys $v | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s:%s" $hk (toString (index $v $hk))) -}}
{{- end -}}
{{- $v = join "," $pairs -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $v)) (toString $v) -}}
{{- $_ := set $env $name (toString $v) -}}
{{- end -}}
{{- $_ := unset $section $key -}}
{{- end -}}
{{- end -}}

{{- /* lists and maps written as Falcosidekick strings */ -}}
{{- include "lanner.normalizeSection" (dict "section" $cfg "prefix" "") -}}
{{- range $k := list "slack" "discord" "alertmanager" "webhook" -}}
{{- if kindIs "map" (index $cfg $k) -}}
{{- include "lanner.normalizeSection" (dict "section" (index $cfg $k) "prefix" (printf "%s." $k)) -}}
{{- end -}}
{{- end -}}
{{- range $path := list "aws.sqs" "aws.s3" "gcp.pubsub" -}}
{{- $parts := splitList "." $path -}}
{{- $parent := index $cfg (first $parts) -}}
{{- if and (kindIs "map" $parent) (kindIs "map" (index $parent (last $parts))) -}}
{{- include "lanner.normalizeSection" (dict "section" (index $parent (last $parts)) "prefix" (printf "%s." $path)) -}}
{{- end -}}
{{- end -}}

{{- /* empty sections say nothing */ -}}
{{- range $k, $v := deepCopy $cfg -}}
{{- if and (kindIs "map" $v) (not $v) -}}
{{- $_ := unset $cfg $k -}}
{{- end -}}
{{- end -}}

{{- /* what the chart sets */ -}}
{{- $eff := include "lanner.eff" . | fromYaml -}}
{{- $file := dict "listenport" 2801 "grpcport" 5060 "store" $eff.store "datadir" "/var/lib/lanner" -}}
{{- with $V.hub.grpcTls -}}
{{- if .enabled -}}
{{- $dir := include "lanner.grpcTls.dir" $ -}}
{{- $grpc := dict "certfile" (printf "%s/tls.crt" $dir) "keyfile" (printf "%s/tls.key" $dir) -}}
{{- if .clientAuth -}}
{{- $_ := set $grpc "cacertfile" (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- $_ := set $file "grpc" $grpc -}}
{{- end -}}
{{- end -}}
{{- $publicurl := $V.hub.publicurl | default $cfg.publicurl -}}
{{- if and (not $publicurl) $V.ui.ingress.enabled $V.ui.ingress.hosts -}}
{{- $host := (first $V.ui.ingress.hosts).host -}}
{{- $tls := false -}}
{{- range $V.ui.ingress.tls -}}
{{- if has $host (.hosts | default list) }}{{ $tls = true }}{{ end -}}
{{- end -}}
{{- if $host }}{{ $publicurl = printf "%s://%s" (ternary "https" "http" $tls) $host }}{{ end -}}
{{- end -}}
{{- if $publicurl -}}
{{- $_ := set $cfg "publicurl" $publicurl -}}
{{- end -}}
{{- $file = mergeOverwrite $file $cfg -}}
{{- toYaml (dict "config" $file "env" $env "serviceAccountAnnotations" $sa "existingSecret" $existing "extraEnv" $extraEnv "notes" $notes) -}}
{{- end -}}
