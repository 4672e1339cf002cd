{{/* The detector's container securityContext: least privilege (root, the capabilities eBPF
needs, nothing else, read-only root filesystem), or privileged. Call with
(dict "det" $det "caps" $caps "privileged" bool "appArmor" bool). */}}
{{- define "lanner.detector.securityContext" -}}
{{- if .privileged -}}
privileged: true
runAsUser: 0
readOnlyRootFilesystem: true
{{- else -}}
privileged: false
runAsUser: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  {{- with .caps }}
  add:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with .det.seccompProfile }}
seccompProfile:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and .appArmor .det.appArmorProfile }}
appArmorProfile:
  type: {{ .det.appArmorProfile }}
  {{- if eq .det.appArmorProfile "Localhost" }}
  localhostProfile: {{ required "detector.appArmorLocalhostProfile is required with detector.appArmorProfile=Localhost" .det.appArmorLocalhostProfile }}
  {{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The detector's mounts: only what it reads on the host, all read-only. The setup init
container gets the ones `lanner detector setup` uses. Call with (dict "det" $det "setup" bool). */}}
{{- define "lanner.detector.mounts" -}}
- name: host-proc
  mountPath: /host/proc
  readOnly: true
{{- if and .setup .det.setup.mountTracefs }}
# Bidirectional: the tracefs mount made here is the node's, seen by the detector.
- name: tracefs
  mountPath: /sys/kernel/tracing
  mountPropagation: Bidirectional
{{- else }}
- name: tracefs
  mountPath: /sys/kernel/tracing
  readOnly: true
{{- end }}
{{- if .det.hostKernelHeaders }}
- name: host-modules
  mountPath: /lib/modules
  readOnly: true
- name: host-usr-src
  mountPath: /usr/src
  readOnly: true
{{- else }}
- name: modules
  mountPath: /lib/modules
{{- end }}
- name: tmp
  mountPath: /tmp
{{- if not .setup }}
- name: host-cgroup
  mountPath: /host/sys/fs/cgroup
  readOnly: true
{{- if .det.hostUsers }}
- name: host-passwd
  mountPath: /etc/passwd
  readOnly: true
- name: host-group
  mountPath: /etc/group
  readOnly: true
{{- end }}
{{- if .det.kubeletLogDirs }}
- name: pod-logs
  mountPath: /host/var/log/pods
  readOnly: true
- name: container-logs
  mountPath: /host/var/log/containers
  readOnly: true
{{- end }}
{{- range $i, $socket := .det.runtimeSockets }}
- name: {{ printf "runtime-socket-%d" $i }}
  mountPath: {{ printf "/host%s" $socket }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Changes when a rules file changes, so the detectors restart with the new rules. */}}
{{- define "lanner.rulesChecksum" -}}
{{- $rules := include (print .Template.BasePath "/rules-configmap.yaml") . -}}
{{- $custom := include (print .Template.BasePath "/custom-rules-configmap.yaml") . -}}
{{- printf "%s\n%s" $rules $custom | sha256sum -}}
{{- end -}}
