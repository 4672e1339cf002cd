{{/* Names, labels, images. */}}

{{- define "lanner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lanner.fullname" -}}
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

{{/* Object names: one helper each, used by the objects and by everything that points at them. */}}
{{- define "lanner.detector.fullname" -}}{{ include "lanner.fullname" . | trunc 54 | trimSuffix "-" }}-detector{{- end -}}
{{- define "lanner.hub.fullname" -}}{{ include "lanner.fullname" . | trunc 59 | trimSuffix "-" }}-hub{{- end -}}
{{- define "lanner.hub.headless" -}}{{ include "lanner.fullname" . | trunc 50 | trimSuffix "-" }}-hub-headless{{- end -}}
{{- define "lanner.redis.fullname" -}}{{ include "lanner.fullname" . | trunc 57 | trimSuffix "-" }}-redis{{- end -}}
{{- define "lanner.auth.fullname" -}}{{ include "lanner.fullname" . | trunc 58 | trimSuffix "-" }}-auth{{- end -}}
{{- define "lanner.rules.fullname" -}}{{ include "lanner.fullname" . | trunc 57 | trimSuffix "-" }}-rules{{- end -}}
{{- define "lanner.customRules.fullname" -}}{{ include "lanner.fullname" . | trunc 50 | trimSuffix "-" }}-custom-rules{{- end -}}
{{- define "lanner.hubConfig.fullname" -}}{{ include "lanner.fullname" . | trunc 52 | trimSuffix "-" }}-hub-config{{- end -}}
{{- define "lanner.hubSecret.fullname" -}}{{ include "lanner.fullname" . | trunc 51 | trimSuffix "-" }}-hub-outputs{{- end -}}
{{/* The audit webhook: its Deployment, Service, token Secret and ServiceAccount share the name
that the API server's webhook kubeconfig points at. */}}
{{- define "lanner.k8saudit.fullname" -}}{{ include "lanner.fullname" . | trunc 57 | trimSuffix "-" }}-audit{{- end -}}

{{- define "lanner.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lanner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "ctx" $ "component" "hub"). */}}
{{- define "lanner.labels" -}}
helm.sh/chart: {{ include "lanner.chart" .ctx }}
{{ include "lanner.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: lanner
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "lanner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lanner.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* registry/repository:tag or @digest; call with (dict "ctx" $ "image" .Values.x.image). */}}
{{- define "lanner.image" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .image.registry -}}
{{- $ref := .image.repository -}}
{{- if $registry }}{{ $ref = printf "%s/%s" $registry $ref }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{- define "lanner.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
{{- if kindIs "string" . }}
  - name: {{ . }}
{{- else }}
  - {{ toYaml . | nindent 4 | trim }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "lanner.detector.serviceAccountName" -}}
{{- if .Values.detector.serviceAccount.create -}}
{{- .Values.detector.serviceAccount.name | default (include "lanner.detector.fullname" .) -}}
{{- else -}}
{{- .Values.detector.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "lanner.k8saudit.serviceAccountName" -}}
{{- if .Values.k8saudit.serviceAccount.create -}}
{{- .Values.k8saudit.serviceAccount.name | default (include "lanner.k8saudit.fullname" .) -}}
{{- else -}}
{{- .Values.k8saudit.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "lanner.hub.serviceAccountName" -}}
{{- if .Values.hub.serviceAccount.create -}}
{{- .Values.hub.serviceAccount.name | default (include "lanner.hub.fullname" .) -}}
{{- else -}}
{{- .Values.hub.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The hub's in-cluster DNS name (the Service), and the detectors' gRPC target (the headless
Service: every replica is a target, so a detector fails over at once). */}}
{{- define "lanner.hub.host" -}}
{{- printf "%s.%s.svc" (include "lanner.hub.fullname" .) (include "lanner.namespace" .) -}}
{{- end -}}
{{- define "lanner.hub.grpcHost" -}}
{{- printf "%s.%s.svc" (include "lanner.hub.headless" .) (include "lanner.namespace" .) -}}
{{- end -}}
{{- define "lanner.hub.grpcTarget" -}}
{{- printf "%s:%d" (include "lanner.hub.grpcHost" .) (int .Values.hub.service.grpcPort) -}}
{{- end -}}

{{/* gRPC TLS between the hub and its clients (the detectors, the audit webhook), as files in
/etc/lanner/grpc-tls: tls.crt and tls.key (the hub's, or a client's), ca.crt (the CA under
hub.grpcTls.caKey). A client verifies the hub with that CA and, for mutual TLS, presents
detector.hubTls's certificate. Only the keys named are mounted: a client never gets the hub's
key. The clients' parts take the root context and are used only while they publish to the
hub (detector.hubOutput) with hub.grpcTls.enabled. */}}
{{- define "lanner.grpcTls.dir" -}}/etc/lanner/grpc-tls{{- end -}}
{{- define "lanner.grpcTls.clientArgs" -}}
- --hub-cacert
- {{ printf "%s/ca.crt" (include "lanner.grpcTls.dir" .) | quote }}
{{- if .Values.detector.hubTls.secretName }}
- --hub-cert
- {{ printf "%s/tls.crt" (include "lanner.grpcTls.dir" .) | quote }}
- --hub-key
- {{ printf "%s/tls.key" (include "lanner.grpcTls.dir" .) | quote }}
{{- end }}
{{- end -}}
{{- define "lanner.grpcTls.mount" -}}
- name: grpc-tls
  mountPath: {{ include "lanner.grpcTls.dir" . }}
  readOnly: true
{{- end -}}
{{- define "lanner.grpcTls.clientVolume" -}}
{{- $hubTls := .Values.hub.grpcTls -}}
{{- $client := .Values.detector.hubTls -}}
- name: grpc-tls
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $hubTls.secretName }}
          items:
            - key: {{ $hubTls.caKey }}
              path: ca.crt
      {{- if $client.secretName }}
      - secret:
          name: {{ $client.secretName }}
          items:
            - key: {{ $client.certKey }}
              path: tls.crt
            - key: {{ $client.keyKey }}
              path: tls.key
      {{- end }}
{{- end -}}

{{/* Generated secrets: made once per render (memoised on the root context, since several
templates hash or mount them), and taken from the live Secret on upgrades (lookup), so a token
never changes by itself. `helm template` has no cluster: it generates new ones every time. */}}
{{- define "lanner.generated" -}}
{{- if not (hasKey . "LannerGenerated") -}}
{{- $auth := dict -}}
{{- $live := lookup "v1" "Secret" (include "lanner.namespace" .) (include "lanner.auth.fullname" .) -}}
{{- $liveData := (get ($live | default dict) "data") | default dict -}}
{{- range $key := list "hub-token" "ui-token" -}}
{{- if hasKey $liveData $key -}}
{{- $_ := set $auth $key (index $liveData $key | b64dec) -}}
{{- else -}}
{{- $_ := set $auth $key (randAlphaNum 40) -}}
{{- end -}}
{{- end -}}
{{- $redis := "" -}}
{{- $liveRedis := lookup "v1" "Secret" (include "lanner.namespace" .) (include "lanner.redis.fullname" .) -}}
{{- $liveRedisData := (get ($liveRedis | default dict) "data") | default dict -}}
{{- if hasKey $liveRedisData "redis-password" -}}
{{- $redis = index $liveRedisData "redis-password" | b64dec -}}
{{- else -}}
{{- $redis = randAlphaNum 40 -}}
{{- end -}}
{{- $audit := "" -}}
{{- $liveAudit := lookup "v1" "Secret" (include "lanner.namespace" .) (include "lanner.k8saudit.fullname" .) -}}
{{- $liveAuditData := (get ($liveAudit | default dict) "data") | default dict -}}
{{- if hasKey $liveAuditData "token" -}}
{{- $audit = index $liveAuditData "token" | b64dec -}}
{{- else -}}
{{- $audit = randAlphaNum 40 -}}
{{- end -}}
{{- $_ := set . "LannerGenerated" (dict "auth" $auth "redis" $redis "audit" $audit) -}}
{{- end -}}
{{- toYaml .LannerGenerated -}}
{{- end -}}

{{/* The UI token: given, or generated (not used when an existingSecret holds it). */}}
{{- define "lanner.uiToken" -}}
{{- .Values.ui.auth.token | default (index (include "lanner.generated" . | fromYaml).auth "ui-token") -}}
{{- end -}}
{{- define "lanner.hubToken" -}}
{{- index (include "lanner.generated" . | fromYaml).auth "hub-token" -}}
{{- end -}}
{{- define "lanner.k8sauditToken" -}}
{{- (include "lanner.generated" . | fromYaml).audit -}}
{{- end -}}
{{- define "lanner.redisPassword" -}}
{{- .Values.redis.auth.password | default (include "lanner.generated" . | fromYaml).redis -}}
{{- end -}}

{{/* secretKeyRef of the four generated-or-given secrets. */}}
{{- define "lanner.uiTokenRef" -}}
name: {{ .Values.ui.auth.existingSecret | default (include "lanner.auth.fullname" .) }}
key: {{ ternary .Values.ui.auth.existingSecretKey "ui-token" (ne .Values.ui.auth.existingSecret "") }}
{{- end -}}
{{- define "lanner.hubTokenRef" -}}
name: {{ .Values.hub.grpcToken.existingSecret | default (include "lanner.auth.fullname" .) }}
key: {{ ternary .Values.hub.grpcToken.existingSecretKey "hub-token" (ne .Values.hub.grpcToken.existingSecret "") }}
{{- end -}}
{{- define "lanner.k8sauditTokenRef" -}}
name: {{ .Values.k8saudit.token.existingSecret | default (include "lanner.k8saudit.fullname" .) }}
key: {{ ternary .Values.k8saudit.token.existingSecretKey "token" (ne .Values.k8saudit.token.existingSecret "") }}
{{- end -}}
{{- define "lanner.redisPasswordRef" -}}
name: {{ .Values.redis.auth.existingSecret | default (include "lanner.redis.fullname" .) }}
key: {{ ternary .Values.redis.auth.existingSecretPasswordKey "redis-password" (ne .Values.redis.auth.existingSecret "") }}
{{- end -}}

{{/* Pod security context blocks shared by the hub, Redis and the test pod. */}}
{{- define "lanner.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}
