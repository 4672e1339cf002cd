{{/*
"lanner.eff": the values the templates use, as YAML: the Lanner keys, with the Falco and
Falcosidekick chart keys (driver, falco, falcosidekick, customRules and a few top-level ones)
read into them, plus the audit webhook's (`k8saudit`) and `notes` (how each compatibility key was understood, for NOTES.txt).
Values that cannot work stop the render here with a message naming the key and the fix.
Deterministic: templates include it as often as they need.
*/}}
{{- define "lanner.eff" -}}
{{- $V := .Values -}}
{{- $notes := list -}}
{{- $det := deepCopy $V.detector -}}
{{- $hub := deepCopy $V.hub -}}
{{- $audit := deepCopy $V.k8saudit -}}
{{- $driver := $V.driver | default dict -}}
{{- $falco := $V.falco | default dict -}}
{{- $fsk := $V.falcosidekick | default dict -}}
{{- $custom := deepCopy ($V.customRules | default dict) -}}
{{- $fullname := include "lanner.fullname" . -}}

{{- /* ---- Falco's driver ---- */ -}}
{{- if and (hasKey $driver "enabled") (not (kindIs "invalid" $driver.enabled)) -}}
{{- $_ := set $det "enabled" (eq (toString $driver.enabled) "true") -}}
{{- end -}}
{{- if $driver.kind -}}
{{- $kind := lower (toString $driver.kind) -}}
{{- if has $kind (list "kmod" "module" "modern-bpf" "ebpf") -}}
{{- $notes = append $notes (printf "driver.kind=%s: Lanner has one driver, eBPF on tracepoints with CO-RE-style offsets from the node's BTF; nothing is built or loaded into the kernel. Read as modern_ebpf (least privileged: capabilities %s, not privileged)." $kind (join ", " $det.capabilities)) -}}
{{- else if eq $kind "gvisor" -}}
{{- fail "driver.kind=gvisor: Lanner cannot watch gVisor sandboxes (it reads the host kernel's tracepoints, which a gVisor sandbox does not use). Remove driver.kind, or set driver.enabled=false to run only the hub." -}}
{{- else if not (has $kind (list "modern_ebpf" "auto")) -}}
{{- fail (printf "driver.kind=%s is not a driver. Lanner uses eBPF: set driver.kind=modern_ebpf (kmod, module, modern-bpf, ebpf and auto are read as modern_ebpf too) or leave it out." $kind) -}}
{{- end -}}
{{- end -}}
{{- range $k, $_ := $driver -}}
{{- if not (has $k (list "enabled" "kind")) -}}
{{- $notes = append $notes (printf "driver.%s is not used by Lanner (no driver loader; eBPF needs no download)." $k) -}}
{{- end -}}
{{- end -}}

{{- /* ---- Falcosidekick's chart keys ---- */ -}}
{{- if and (hasKey $fsk "enabled") (not (kindIs "invalid" $fsk.enabled)) -}}
{{- $_ := set $hub "enabled" (eq (toString $fsk.enabled) "true") -}}
{{- end -}}
{{- if and (hasKey $fsk "replicaCount") (not (kindIs "invalid" $fsk.replicaCount)) -}}
{{- $_ := set $hub "replicaCount" (int $fsk.replicaCount) -}}
{{- end -}}
{{- range $k := list "resources" "nodeSelector" "tolerations" "affinity" "podAnnotations" "podLabels" "priorityClassName" -}}
{{- if hasKey $fsk $k -}}
{{- $_ := set $hub $k (index $fsk $k) -}}
{{- end -}}
{{- end -}}
{{- range $k, $_ := $fsk -}}
{{- if eq $k "webui" -}}
{{- $notes = append $notes "falcosidekick.webui: the UI is served by the hub itself (port http, path /ui/); it has no user:password, see ui.auth and ui.ingress." -}}
{{- else if not (has $k (list "enabled" "replicaCount" "config" "resources" "nodeSelector" "tolerations" "affinity" "podAnnotations" "podLabels" "priorityClassName")) -}}
{{- $notes = append $notes (printf "falcosidekick.%s is not used: the hub's settings are under hub.*." $k) -}}
{{- end -}}
{{- end -}}

{{- /* ---- Falco chart top-level keys that describe the Falco pods: the detector here ---- */ -}}
{{- range $k := list "resources" "nodeSelector" "tolerations" "affinity" "podAnnotations" "podLabels" -}}
{{- if hasKey $V $k -}}
{{- $_ := set $det $k (index $V $k) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $V "podPriorityClassName" -}}
{{- $_ := set $det "priorityClassName" $V.podPriorityClassName -}}
{{- end -}}
{{- range $k := list "image" "imagePullSecrets" "controller" "collectors" "tty" "mounts" "extra" "healthChecks" "podSecurityContext" "containerSecurityContext" "metrics" "certs" "falcoctl" "rbac" "scc" "grafana" "responseActions" "podHostname" "falcoHostnameEnv" "serviceAccount" -}}
{{- if hasKey $V $k -}}
{{- $notes = append $notes (printf "%s (a Falco chart key) is not used: see detector.* for the detector's settings." $k) -}}
{{- end -}}
{{- end -}}

{{- /* ---- falco.yaml keys ---- */ -}}
{{- if hasKey $falco "customRules" -}}
{{- $custom = mergeOverwrite (deepCopy ($falco.customRules | default dict)) $custom -}}
{{- $notes = append $notes "falco.customRules: read as customRules (it belongs at the top level of the values)." -}}
{{- end -}}
{{- range $k := list "grpc" "grpc_output" -}}
{{- if hasKey $falco $k -}}
{{- fail (printf "falco.%s: Falco's gRPC output was removed (Falco 0.44) and has no meaning here: Lanner's detectors always publish to the hub over gRPC. Remove falco.%s." $k $k) -}}
{{- end -}}
{{- end -}}

{{- /* priority: the lowest priority of the rules loaded */ -}}
{{- $ranks := dict "emergency" 0 "alert" 1 "critical" 2 "error" 3 "warning" 4 "notice" 5 "informational" 6 "info" 6 "debug" 7 -}}
{{- if and (hasKey $falco "priority") (not (kindIs "invalid" $falco.priority)) -}}
{{- $_ := set $det "minimumPriority" (toString $falco.priority) -}}
{{- end -}}
{{- $prio := lower (trim (toString ($det.minimumPriority | default ""))) -}}
{{- if and $prio (not (hasKey $ranks $prio)) -}}
{{- fail (printf "detector.minimumPriority (or falco.priority) = %q is not a priority: use one of emergency, alert, critical, error, warning, notice, informational, debug." $prio) -}}
{{- end -}}
{{- $_ := set $det "minimumPriority" $prio -}}

{{- /* json_output, stdout_output, rule_matching */ -}}
{{- range $k := list "json_output" "jsonOutput" -}}
{{- if and (hasKey $falco $k) (not (kindIs "invalid" (index $falco $k))) -}}
{{- $json := eq (toString (index $falco $k)) "true" -}}
{{- $_ := set $det.stdout "format" (ternary "json" "text" $json) -}}
{{- if eq $k "jsonOutput" -}}
{{- $notes = append $notes (printf "falco.jsonOutput (Falco chart 1.x) read as falco.json_output=%t: the detector prints alerts as %s. The hub always receives JSON." $json (ternary "JSON lines" "text lines" $json)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with $falco.stdout_output -}}
{{- if hasKey . "enabled" -}}
{{- $_ := set $det.stdout "enabled" (eq (toString .enabled) "true") -}}
{{- end -}}
{{- end -}}
{{- with $falco.rule_matching -}}
{{- if not (has (toString .) (list "first" "all")) -}}
{{- fail (printf "falco.rule_matching=%s: use first or all." (toString .)) -}}
{{- end -}}
{{- $_ := set $det "ruleMatching" (toString .) -}}
{{- end -}}

{{- /* ---- hub and store ---- */ -}}
{{- $store := "sqlite" -}}
{{- $external := or $V.externalRedis.url $V.externalRedis.existingSecret -}}
{{- if $hub.enabled -}}
{{- if and $V.redis.enabled $external -}}
{{- fail "redis.enabled=true and externalRedis are both set: set redis.enabled=false to use the external Redis, or clear externalRedis." -}}
{{- end -}}
{{- if or $V.redis.enabled $external -}}
{{- $store = "redis" -}}
{{- else if gt (int $hub.replicaCount) 1 -}}
{{- fail (printf "hub.replicaCount=%d (or falcosidekick.replicaCount) needs a store the replicas share: keep redis.enabled=true or set externalRedis.url. Only a single replica can keep its own SQLite store." (int $hub.replicaCount)) -}}
{{- end -}}
{{- if lt (int $hub.replicaCount) 1 -}}
{{- fail "hub.replicaCount must be at least 1 (set hub.enabled=false to run no hub)." -}}
{{- end -}}
{{- end -}}

{{- /* http_output: where Falco sent its alerts (usually Falcosidekick) */ -}}
{{- $extraOutputs := concat (list) ($det.extraOutputs | default list) -}}
{{- range $k := list "http_output" "httpOutput" -}}
{{- $http := index $falco $k | default dict -}}
{{- if and (hasKey $falco $k) (eq (toString $http.enabled) "true") -}}
{{- $url := toString ($http.url | default "") -}}
{{- $host := regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://([^/@]*@)?([^/:?#]*).*$" $url "${2}" -}}
{{- $labels := splitList "." $host -}}
{{- $ours := list "falcosidekick" (printf "%s-falcosidekick" $.Release.Name) (printf "%s-falcosidekick" $fullname) (include "lanner.hub.fullname" $) (include "lanner.hub.headless" $) -}}
{{- /* a Service name, alone or in this release's namespace: what the author meant is this release's Falcosidekick */ -}}
{{- $here := or (eq (len $labels) 1) (eq (index $labels 1) (include "lanner.namespace" $)) -}}
{{- if or (not $url) (and (has (first $labels) $ours) $here) -}}
{{- if not $hub.enabled -}}
{{- fail (printf "falco.%s.url=%q points at Falcosidekick, but the hub (falcosidekick.enabled / hub.enabled) is off: turn the hub on, or give the URL of a Falcosidekick or hub that exists." $k $url) -}}
{{- end -}}
{{- $notes = append $notes (printf "falco.%s (url %q): the detectors send to this release's hub instead, over gRPC with acknowledgements and resends (detector.hubOutput)." $k $url) -}}
{{- else -}}
{{- $extraOutputs = append $extraOutputs $url -}}
{{- $notes = append $notes (printf "falco.%s: the detectors also post every alert to %s, as Falco's http_output does." $k (regexReplaceAll "//[^/@]*@" $url "//***@")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $det "extraOutputs" (uniq $extraOutputs) -}}

{{- /* load_plugins: Lanner has no plugins; k8saudit is the audit webhook */ -}}
{{- $auditName := include "lanner.k8saudit.fullname" $ -}}
{{- range $k := list "load_plugins" "loadPlugins" -}}
{{- range $p := (index $falco $k | default list) -}}
{{- $p = toString $p -}}
{{- if eq $p "k8saudit" -}}
{{- $_ := set $audit "enabled" true -}}
{{- $_ := set $audit "fromLoadPlugins" $k -}}
{{- else if has $p (list "json" "container" "k8smeta") -}}
{{- $notes = append $notes (printf "falco.%s: %s - built into Lanner (nothing to load)." $k $p) -}}
{{- else -}}
{{- fail (printf "falco.%s: plugin %q has no Lanner equivalent (Lanner loads no plugins; json, container and k8smeta are built in, k8saudit is the audit webhook, k8saudit.enabled). Remove it." $k $p) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* ---- the Kubernetes audit webhook ---- */ -}}
{{- /* falco.plugins: the k8saudit plugin's open_params (where it listened) and init_config */ -}}
{{- range $pl := (ternary ($falco.plugins | default list) list (and $audit.enabled (kindIs "slice" $falco.plugins))) -}}
{{- if and (kindIs "map" $pl) (eq (toString $pl.name) "k8saudit") -}}
{{- with $pl.open_params -}}
{{- $url := toString . -}}
{{- $re := "^(https?)://([^/:]*|\\[[^]]*\\])(:([0-9]+))?(/[^?#]*)?$" -}}
{{- $m := regexFindAll $re $url 1 -}}
{{- if not $m -}}
{{- fail (printf "falco.plugins[k8saudit].open_params=%q is not the webhook's URL (http://:9765/k8s-audit): fix it or remove it." $url) -}}
{{- end -}}
{{- $port := regexReplaceAll $re $url "${4}" -}}
{{- $path := regexReplaceAll $re $url "${5}" -}}
{{- $changed := false -}}
{{- if and $path (ne $path $audit.path) -}}
{{- $_ := set $audit "path" $path -}}
{{- $changed = true -}}
{{- end -}}
{{- if and $port (ne (int $port) (int $audit.service.port)) -}}
{{- $_ := set $audit.service "port" (int $port) -}}
{{- $changed = true -}}
{{- end -}}
{{- if $changed -}}
{{- $notes = append $notes (printf "falco.plugins[k8saudit].open_params=%s: the audit webhook's Service listens on port %d, path %s (k8saudit.service.port, k8saudit.path)." $url (int $audit.service.port) $audit.path) -}}
{{- end -}}
{{- if and (hasPrefix "https://" $url) (not $audit.tls.enabled) -}}
{{- $notes = append $notes "falco.plugins[k8saudit].open_params is https://: the webhook serves HTTP until k8saudit.tls.enabled=true and k8saudit.tls.secretName (a kubernetes.io/tls Secret) are set; sslCertificate is not read." -}}
{{- end -}}
{{- end -}}
{{- $ic := $pl.init_config | default dict -}}
{{- if kindIs "string" $ic -}}{{- $ic = fromYaml $ic | default dict -}}{{- end -}}
{{- if or (not (kindIs "map" $ic)) (hasKey $ic "Error") -}}
{{- fail (printf "falco.plugins[k8saudit].init_config must be a map or its JSON text (e.g. {\"maxEventSize\": 262144}), not %s" (toJson $pl.init_config)) -}}
{{- end -}}
{{- if $ic.maxEventSize -}}
{{- $_ := set $audit "maxEventBytes" (int64 $ic.maxEventSize) -}}
{{- end -}}
{{- if $ic.webhookMaxBatchSize -}}
{{- $_ := set $audit "maxBatchBytes" (int64 $ic.webhookMaxBatchSize) -}}
{{- end -}}
{{- if $ic.sslCertificate -}}
{{- $notes = append $notes "falco.plugins[k8saudit].init_config.sslCertificate (a file of Falco's image) is not read: give the certificate as a Secret, k8saudit.tls.secretName." -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* Falco chart's `services`: the Service that exposed the plugin's port (often a NodePort) */ -}}
{{- range $svc := (ternary $V.services list (kindIs "slice" $V.services)) -}}
{{- $matched := false -}}
{{- if $audit.enabled -}}
{{- range $p := ($svc.ports | default list) -}}
{{- if eq (int $p.port) (int $audit.service.port) -}}
{{- $matched = true -}}
{{- if $svc.type -}}{{- $_ := set $audit.service "type" (toString $svc.type) -}}{{- end -}}
{{- if $p.nodePort -}}{{- $_ := set $audit.service "nodePort" (int $p.nodePort) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $matched -}}
{{- $notes = append $notes (printf "services[%s] (a Falco chart key): read as the audit webhook's Service %s (type %s%s)." (toString $svc.name) $auditName $audit.service.type (ternary (printf ", nodePort %d" (int ($audit.service.nodePort | default 0))) "" (not (empty $audit.service.nodePort)))) -}}
{{- else -}}
{{- $notes = append $notes (printf "services[%s] (a Falco chart key) is not used: only the audit webhook's port (k8saudit.service) is exposed that way." (toString $svc.name)) -}}
{{- end -}}
{{- end -}}
{{- if and $V.services (not (kindIs "slice" $V.services)) -}}
{{- $notes = append $notes "services (a Falco chart key) is not used: see k8saudit.service." -}}
{{- end -}}
{{- with $audit.fromLoadPlugins -}}
{{- $notes = append $notes (printf "falco.%s: k8saudit - the Kubernetes audit webhook runs as Deployment %s (k8saudit.enabled), behind Service %s, port %d, path %s; the API server must be pointed at it (see above)." . $auditName $auditName (int $audit.service.port) $audit.path) -}}
{{- end -}}
{{- $_ := unset $audit "fromLoadPlugins" -}}
{{- if $audit.enabled -}}
{{- if and $audit.tls.enabled (not $audit.tls.secretName) -}}
{{- fail "k8saudit.tls.enabled=true needs k8saudit.tls.secretName: a Secret (kubernetes.io/tls, keys tls.crt and tls.key) holding the webhook's certificate and key." -}}
{{- end -}}
{{- $ca := $audit.tls.clientCA -}}
{{- if and $ca.secretName $ca.configMapName -}}
{{- fail "k8saudit.tls.clientCA: give secretName or configMapName, not both." -}}
{{- end -}}
{{- if and (or $ca.secretName $ca.configMapName) (not $audit.tls.enabled) -}}
{{- fail "k8saudit.tls.clientCA needs k8saudit.tls.enabled=true (client certificates are checked in the TLS handshake) and k8saudit.tls.secretName." -}}
{{- end -}}
{{- if ne $audit.service.type "NodePort" -}}
{{- if $audit.service.nodePort -}}
{{- fail (printf "k8saudit.service.nodePort needs k8saudit.service.type=NodePort (it is %s)." $audit.service.type) -}}
{{- end -}}
{{- end -}}
{{- if not (hasPrefix "/" $audit.path) -}}
{{- fail (printf "k8saudit.path=%q must start with /, e.g. /k8s-audit." $audit.path) -}}
{{- end -}}
{{- end -}}

{{- /* ---- gRPC TLS between the hub and its clients; the detectors' spill file ---- */ -}}
{{- $gtls := $hub.grpcTls -}}
{{- $publishing := and $det.hubOutput $hub.enabled (or $det.enabled $audit.enabled) -}}
{{- if $hub.enabled -}}
{{- if and $gtls.enabled (not $gtls.secretName) -}}
{{- fail "hub.grpcTls.enabled=true needs hub.grpcTls.secretName: a Secret (kubernetes.io/tls: tls.crt and tls.key, with the CA that signed them under ca.crt, as cert-manager writes it) holding the certificate of the hub's gRPC port." -}}
{{- end -}}
{{- if and $gtls.clientAuth (not $gtls.enabled) -}}
{{- fail "hub.grpcTls.clientAuth=true (mutual TLS) needs hub.grpcTls.enabled=true and hub.grpcTls.secretName: client certificates are checked in the TLS handshake." -}}
{{- end -}}
{{- if and $det.hubTls.secretName (not $gtls.enabled) -}}
{{- fail "detector.hubTls.secretName needs hub.grpcTls.enabled=true: the detectors present their certificate in a TLS handshake, and the hub's gRPC port serves no TLS until then." -}}
{{- end -}}
{{- if and $gtls.clientAuth $publishing (not $det.hubTls.secretName) -}}
{{- fail "hub.grpcTls.clientAuth=true: the hub accepts only clients with a certificate, and the detectors (and the audit webhook) have none while detector.hubOutput is true. Set detector.hubTls.secretName (a kubernetes.io/tls Secret signed by the CA under hub.grpcTls.caKey), or turn hub.grpcTls.clientAuth off." -}}
{{- end -}}
{{- end -}}
{{- if and $det.enabled $det.spill.enabled -}}
{{- $grpcOutputs := ternary 1 0 (and $det.hubOutput $hub.enabled) -}}
{{- range $det.extraOutputs -}}
{{- if hasPrefix "grpc://" . }}{{ $grpcOutputs = add1 $grpcOutputs }}{{ end -}}
{{- end -}}
{{- if eq (int $grpcOutputs) 0 -}}
{{- fail "detector.spill.enabled=true: the spill file holds what the detector's gRPC output cannot hand to the hub yet, and the detector has no grpc:// output (detector.hubOutput is false, or the hub is off). Turn detector.spill.enabled off, or publish to the hub." -}}
{{- end -}}
{{- if gt (int $grpcOutputs) 1 -}}
{{- fail (printf "detector.spill.enabled=true with %d grpc:// outputs (the hub and detector.extraOutputs): each would open the same spill file, which takes one publisher, and the detector would stop at start. Keep one grpc:// output, or turn detector.spill.enabled off." (int $grpcOutputs)) -}}
{{- end -}}
{{- if not (hasPrefix "/" (toString $det.spill.hostPath)) -}}
{{- fail (printf "detector.spill.hostPath=%q must be an absolute path on the node, e.g. /var/lib/lanner/spill." (toString $det.spill.hostPath)) -}}
{{- end -}}
{{- $update := $det.updateStrategy | default dict -}}
{{- $surge := toString (dig "rollingUpdate" "maxSurge" 0 $update) -}}
{{- if and (ne (toString $update.type) "OnDelete") (not (has $surge (list "0" "0%" ""))) -}}
{{- fail (printf "detector.spill.enabled=true with detector.updateStrategy.rollingUpdate.maxSurge=%s: a new detector pod would start while the old one still holds the node's spill file (one detector at a time), stop, and the rollout would never finish. Use maxSurge: 0 (and maxUnavailable: 1, the default)." $surge) -}}
{{- end -}}
{{- end -}}

{{- /* ---- rules ---- */ -}}
{{- range $name, $text := $custom -}}
{{- if not (kindIs "string" $text) -}}
{{- if and (kindIs "map" $text) (eq (len $text) 1) -}}
{{- $ext := first (keys $text) -}}
{{- fail (printf "customRules.%s is a map, not the text of a rules file: Helm split the file name %s.%s at its dot. Escape the dot: --set-file 'customRules.%s\\.%s=PATH' (in single quotes, so the backslash reaches Helm), or give customRules in a values file." $name $name $ext $name $ext) -}}
{{- end -}}
{{- fail (printf "customRules.%s must be the text of a rules file (file name: content)." $name) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*\\.ya?ml$" $name) -}}
{{- fail (printf "customRules: file name %q must end in .yaml or .yml (only those are loaded from a rules directory) and use letters, digits, '.', '_', '-'. With --set-file escape the dot: --set-file 'customRules.my_rules\\.yaml=PATH'." $name) -}}
{{- end -}}
{{- end -}}

{{- $rulesDir := "/etc/lanner/rules.d" -}}
{{- $defaultFile := "/etc/lanner/rules/lanner_rules.yaml" -}}
{{- $auditFile := "/etc/lanner/rules/lanner_k8s_audit_rules.yaml" -}}
{{- $rulesKey := "" -}}
{{- $rulesValue := list -}}
{{- range $k := list "rules_files" "rules_file" "rulesFile" -}}
{{- if and (hasKey $falco $k) (not (kindIs "invalid" (index $falco $k))) -}}
{{- $rulesKey = $k -}}
{{- $rulesValue = index $falco $k -}}
{{- end -}}
{{- end -}}
{{- if $rulesKey -}}
{{- $given := ternary (list $rulesValue) $rulesValue (kindIs "string" $rulesValue) -}}
{{- $mapped := list -}}
{{- range $p := $given -}}
{{- $path := trimSuffix "/" (toString $p) -}}
{{- $base := base $path -}}
{{- if eq $path "/etc/falco/falco_rules.yaml" -}}
{{- $mapped = append $mapped $defaultFile -}}
{{- $notes = append $notes (printf "falco.%s: /etc/falco/falco_rules.yaml (Falco's default rules) is Lanner's default rules here, %s. To load Falco's own file, put it in customRules." $rulesKey $defaultFile) -}}
{{- else if eq $path "/etc/falco/rules.d" -}}
{{- $mapped = append $mapped $rulesDir -}}
{{- else if and (eq $path "/etc/falco/k8s_audit_rules.yaml") (not (hasKey $custom $base)) -}}
{{- if $audit.enabled -}}
{{- $mapped = append $mapped $auditFile -}}
{{- $notes = append $notes (printf "falco.%s: /etc/falco/k8s_audit_rules.yaml (Falco's audit rules) is Lanner's audit rules here, %s, loaded by the audit webhook. Falco's own file loads unchanged: put it in customRules (--set-file 'customRules.k8s_audit_rules\\.yaml=PATH')." $rulesKey $auditFile) -}}
{{- else -}}
{{- $notes = append $notes (printf "falco.%s: /etc/falco/k8s_audit_rules.yaml is left out: the audit webhook is off (k8saudit.enabled=true or falco.load_plugins: [k8saudit] turns it on)." $rulesKey) -}}
{{- end -}}
{{- else if hasPrefix "/etc/falco/" $path -}}
{{- if hasKey $custom $base -}}
{{- $mapped = append $mapped (printf "%s/%s" $rulesDir $base) -}}
{{- else if eq $base "falco_rules.local.yaml" -}}
{{- $notes = append $notes (printf "falco.%s: /etc/falco/falco_rules.local.yaml is left out: Falco ships it empty; put local rules in customRules." $rulesKey) -}}
{{- else -}}
{{- fail (printf "falco.%s lists %s, a file of Falco's image that Lanner does not have: add it to customRules (customRules.%s) or remove it from the list." $rulesKey $path $base) -}}
{{- end -}}
{{- else -}}
{{- $mapped = append $mapped $path -}}
{{- end -}}
{{- end -}}
{{- if eq $rulesKey "rulesFile" -}}
{{- $notes = append $notes "falco.rulesFile (Falco chart 1.x) read as falco.rules_files." -}}
{{- end -}}
{{- $_ := set $det "rulesFiles" $mapped -}}
{{- end -}}
{{- $files := list -}}
{{- $hasDir := has $rulesDir $det.rulesFiles -}}
{{- range $p := $det.rulesFiles -}}
{{- $p = trimSuffix "/" (toString $p) -}}
{{- if not (and $hasDir (eq (dir $p) $rulesDir)) -}}
{{- $files = append $files $p -}}
{{- end -}}
{{- end -}}
{{- $files = uniq $files -}}
{{- /* the audit rules are the audit webhook's, not the detectors' (see below) */ -}}
{{- $fromList := has $auditFile $files -}}
{{- $files = without $files $auditFile -}}
{{- if and $hasDir (not $custom) -}}
{{- /* nothing is mounted there: a missing path would stop the detector */ -}}
{{- $files = without $files $rulesDir -}}
{{- end -}}
{{- if and (not $det.defaultRules) (has $defaultFile $files) -}}
{{- fail (printf "detector.defaultRules=false, but the rules list (detector.rulesFiles or falco.rules_files) still loads %s: remove it from the list." $defaultFile) -}}
{{- end -}}
{{- if not $hasDir -}}
{{- range $name, $_ := $custom -}}
{{- if not (has (printf "%s/%s" $rulesDir $name) $files) -}}
{{- fail (printf "customRules.%s would not be loaded: the rules list (detector.rulesFiles or falco.rules_files) leaves out %s. Add %s (or /etc/falco/rules.d) to it." $name $rulesDir $rulesDir) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $files -}}
{{- fail "The rules list (detector.rulesFiles or falco.rules_files) is empty: the detector needs at least one rules file." -}}
{{- end -}}

{{- $args := $files -}}

{{- /* The audit webhook's rules: the detectors' list (their macros and lists, and customRules)
with the audit rules after Lanner's default rules, or k8saudit.rulesFiles. */ -}}
{{- $auditArgs := list -}}
{{- if $audit.rulesFiles -}}
{{- range $p := $audit.rulesFiles -}}
{{- $p = trimSuffix "/" (toString $p) -}}
{{- if or $custom (ne $p $rulesDir) -}}
{{- $auditArgs = append $auditArgs $p -}}
{{- end -}}
{{- end -}}
{{- $auditArgs = uniq $auditArgs -}}
{{- else -}}
{{- $head := list -}}
{{- $tail := list -}}
{{- range $p := $files -}}
{{- if hasPrefix "/etc/lanner/rules/" $p -}}
{{- $head = append $head $p -}}
{{- else if or (eq $p $rulesDir) (hasPrefix (printf "%s/" $rulesDir) $p) -}}
{{- $tail = append $tail $p -}}
{{- else if $audit.enabled -}}
{{- $notes = append $notes (printf "k8saudit: %s (in the detectors' rules list) is not mounted in the audit webhook and is left out there; k8saudit.rulesFiles (with k8saudit.extraVolumes) loads it." $p) -}}
{{- end -}}
{{- end -}}
{{- if or $audit.defaultRules $fromList -}}
{{- $head = append $head $auditFile -}}
{{- end -}}
{{- $auditArgs = concat $head $tail -}}
{{- end -}}
{{- if $audit.enabled -}}
{{- if and (not $audit.defaultRules) (has $auditFile $auditArgs) -}}
{{- fail (printf "k8saudit.defaultRules=false, but the audit webhook's rules list (k8saudit.rulesFiles or falco.rules_files) still loads %s: remove it from the list." $auditFile) -}}
{{- end -}}
{{- if and (has $defaultFile $auditArgs) (not $det.defaultRules) -}}
{{- fail (printf "detector.defaultRules=false, but k8saudit.rulesFiles loads %s: remove it from the list." $defaultFile) -}}
{{- end -}}
{{- if not $auditArgs -}}
{{- fail "The audit webhook's rules list is empty: keep k8saudit.defaultRules=true, or list rules files in k8saudit.rulesFiles (and customRules)." -}}
{{- end -}}
{{- end -}}

{{- /* ---- the rest of falco.yaml: not used ---- */ -}}
{{- $used := list "customRules" "priority" "json_output" "jsonOutput" "stdout_output" "rule_matching" "http_output" "httpOutput" "load_plugins" "loadPlugins" "plugins" "rules_files" "rules_file" "rulesFile" -}}
{{- $unused := list -}}
{{- range $k, $_ := $falco -}}
{{- if not (has $k $used) -}}
{{- $unused = append $unused $k -}}
{{- end -}}
{{- end -}}
{{- if $unused -}}
{{- $notes = append $notes (printf "falco.%s: Falco settings with no Lanner equivalent, not used." (join ", falco." (sortAlpha $unused))) -}}
{{- end -}}

{{- $detectorOut := deepCopy $det -}}
{{- $_ := set $detectorOut "rulesArgs" $args -}}
{{- $_ := set $detectorOut "hubOutput" (and $det.hubOutput $hub.enabled) -}}
{{- $_ := set $detectorOut "hubExceptions" (and $detectorOut.hubOutput $det.hubExceptions) -}}
{{- $auditOut := deepCopy $audit -}}
{{- $_ := set $auditOut "rulesArgs" $auditArgs -}}
{{- $_ := set $auditOut "image" (mergeOverwrite (deepCopy $V.detector.image) ($audit.image | default dict)) -}}
{{- $_ := set $auditOut "defaultRulesFile" (has $defaultFile $auditArgs) -}}
{{- $_ := set $auditOut "auditRulesFile" (has $auditFile $auditArgs) -}}
{{- $_ := set $auditOut "hubExceptions" $detectorOut.hubExceptions -}}
{{- toYaml (dict "detector" $detectorOut "hub" $hub "k8saudit" $auditOut "store" $store "customRules" $custom "notes" $notes) -}}
{{- end -}}
