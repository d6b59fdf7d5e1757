{{/* Names, labels and the few derived values shared by the templates. */}}

{{- define "medsam2.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "medsam2.fullname" -}}
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

{{/* Object names: the session service is <fullname>, the rest <fullname>-<part> (kept under 63 chars). */}}
{{- define "medsam2.server.fullname" -}}{{ include "medsam2.fullname" . }}{{- end -}}
{{- define "medsam2.metrics.fullname" -}}{{ include "medsam2.fullname" . | trunc 55 | trimSuffix "-" }}-metrics{{- end -}}
{{- define "medsam2.triton.fullname" -}}{{ include "medsam2.fullname" . | trunc 56 | trimSuffix "-" }}-triton{{- end -}}
{{- define "medsam2.redis.fullname" -}}{{ include "medsam2.fullname" . | trunc 57 | trimSuffix "-" }}-redis{{- end -}}
{{- define "medsam2.models.fullname" -}}{{ include "medsam2.fullname" . | trunc 56 | trimSuffix "-" }}-models{{- end -}}

{{- define "medsam2.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "medsam2.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: medsam2
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: server, triton or build. Usage: include "medsam2.selectorLabels" (list . "server") */}}
{{- define "medsam2.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "medsam2.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "medsam2.componentLabels" -}}
{{ include "medsam2.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion. Usage: include "medsam2.image" (list . .Values.server.image) */}}
{{- define "medsam2.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "medsam2.server.serviceAccountName" -}}
{{- if .Values.server.serviceAccount.create -}}
{{- default (include "medsam2.fullname" .) .Values.server.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.server.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A DNS-1123 label from the model version, for the build Job's name. */}}
{{- define "medsam2.versionSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .Values.modelRepository.version) "-" | trunc 30 | trimAll "-" -}}
{{- end -}}

{{/* <fullname>-build-<version>-<hash of the build settings>: a Job's pod template cannot change in place. */}}
{{- define "medsam2.buildJob.fullname" -}}
{{- $job := .Values.modelRepository.buildJob -}}
{{- $hash := list (include "medsam2.buildJob.backend" .) $job.checkpoint $job.checkpointFile $job.maxBatch $job.image (include "medsam2.models.claimName" .) | toJson | sha256sum | trunc 6 -}}
{{- printf "%s-build-%s" (include "medsam2.fullname" . | trunc 18 | trimSuffix "-") (include "medsam2.versionSlug" .) | trunc 56 | trimSuffix "-" -}}-{{ $hash }}
{{- end -}}

{{/* Where the PVC is mounted, and the repository folder of the current version inside it. */}}
{{- define "medsam2.models.mountPath" -}}/models{{- end -}}
{{- define "medsam2.models.versionPath" -}}/models/{{ .Values.modelRepository.version }}{{- end -}}

{{- define "medsam2.models.claimName" -}}
{{- default (include "medsam2.models.fullname" .) .Values.modelRepository.pvc.existingClaim -}}
{{- end -}}

{{/* The repository path Triton is started with. */}}
{{- define "medsam2.triton.repositoryPath" -}}
{{- $source := .Values.modelRepository.source -}}
{{- if eq $source "s3" -}}{{ .Values.modelRepository.s3.url }}
{{- else if eq $source "image" -}}{{ .Values.modelRepository.imagePath }}
{{- else -}}{{ include "medsam2.models.versionPath" . }}
{{- end -}}
{{- end -}}

{{/* The build Job's backend: tensorrt with Triton, onnxruntime for the embedded CPU-only service. */}}
{{- define "medsam2.buildJob.backend" -}}
{{- if .Values.modelRepository.buildJob.backend -}}{{ .Values.modelRepository.buildJob.backend }}
{{- else if .Values.triton.enabled -}}tensorrt
{{- else -}}onnxruntime
{{- end -}}
{{- end -}}

{{/* True ("true") when the PVC and the build Job are in use. */}}
{{- define "medsam2.usesPvc" -}}
{{- if eq .Values.modelRepository.source "pvc" -}}true{{- end -}}
{{- end -}}

{{/* True ("true") when Triton's own pods build the TensorRT plans in an init container, on the GPU they hold:
     a separate Job would need a second GPU while the pod that waits for it holds the first. */}}
{{- define "medsam2.buildInTritonPod" -}}
{{- if and (include "medsam2.usesPvc" .) .Values.triton.enabled .Values.modelRepository.buildJob.enabled (eq (include "medsam2.buildJob.backend" .) "tensorrt") -}}true{{- end -}}
{{- end -}}

{{/* The build: checkpoint, export (and plans), then the finished folder renamed into place with its marker.
     Several pods may build at once (Triton replicas): each works in its own folder and the first rename wins. */}}
{{- define "medsam2.buildScript" -}}
{{- $job := .Values.modelRepository.buildJob -}}
{{- $backend := include "medsam2.buildJob.backend" . -}}
dest={{ include "medsam2.models.versionPath" . | quote }}
if [ -f "$dest/.medsam2-ready" ]; then echo "model repository $dest is already built"; exit 0; fi
{{- if $job.checkpointFile }}
ckpt={{ $job.checkpointFile | quote }}
{{- else }}
mkdir -p /models/.checkpoints
medsam2 checkpoint download {{ $job.checkpoint | quote }} --out /models/.checkpoints{{ if $job.checkpointSha256 }} --sha256 {{ $job.checkpointSha256 | quote }}{{ end }}
ckpt=/models/.checkpoints/{{ $job.checkpoint }}.pt
{{- end }}
work="$dest.partial-$(hostname)"
rm -rf "$work"
medsam2 export --checkpoint "$ckpt" --out "$work" --backend {{ $backend }} --max-batch {{ $job.maxBatch }}
date -u +%Y-%m-%dT%H:%M:%SZ > "$work/.medsam2-ready"
if [ -f "$dest/.medsam2-ready" ]; then rm -rf "$work"; echo "model repository $dest was built by another pod"; exit 0; fi
rm -rf "$dest"
mv -T "$work" "$dest" || { rm -rf "$work"; [ -f "$dest/.medsam2-ready" ]; }
echo "model repository $dest is ready ({{ $backend }})"
{{- end -}}

{{/* The TensorRT of the Triton image against the one that built the plans (tensorrt_build.check_plan_version):
     the same major.minor.patch, or Triton would fail to deserialize them. */}}
{{- define "medsam2.checkPlanScript" -}}
repo={{ include "medsam2.models.versionPath" . | quote }}
plans="$(cat "$repo/tensorrt_version" 2>/dev/null || true)"
if [ -z "$plans" ]; then echo "$repo/tensorrt_version is missing: the plans' TensorRT is unknown; build a new model version" >&2; exit 1; fi
lib="$(ls /usr/lib/*-linux-gnu/libnvinfer.so.*.*.* 2>/dev/null | head -n 1)"
server="${lib##*libnvinfer.so.}"
server="${server:-${TRT_VERSION:-}}"
if [ -z "$server" ]; then echo "cannot find this Triton image's TensorRT (libnvinfer.so.X.Y.Z or TRT_VERSION)" >&2; exit 1; fi
if [ "$(echo "$plans" | cut -d. -f1-3)" != "$(echo "$server" | cut -d. -f1-3)" ]; then
  echo "the plans in $repo were built with TensorRT $plans, but this Triton has TensorRT $server: rebuild them with TensorRT $server (a new modelRepository.version)" >&2
  exit 1
fi
echo "plans in $repo: TensorRT $plans, server: TensorRT $server"
{{- end -}}

{{/* Marker the build Job writes last; pods wait for it before they start. */}}
{{- define "medsam2.models.readyMarker" -}}{{ include "medsam2.models.versionPath" . }}/.medsam2-ready{{- end -}}

{{/* Settings the chart cannot express in the schema alone. */}}
{{- define "medsam2.validate" -}}
{{- if and (not .Values.triton.enabled) (ne .Values.modelRepository.source "pvc") -}}
{{- fail "triton.enabled=false (CPU-only) reads the model repository from a PVC: set modelRepository.source=pvc" -}}
{{- end -}}
{{- if and (not .Values.triton.enabled) (eq (include "medsam2.buildJob.backend" .) "tensorrt") -}}
{{- fail "triton.enabled=false (CPU-only) runs ONNX Runtime: modelRepository.buildJob.backend must be onnxruntime" -}}
{{- end -}}
{{- if and (eq .Values.modelRepository.source "s3") (not .Values.modelRepository.s3.url) -}}
{{- fail "modelRepository.source=s3 needs modelRepository.s3.url (s3://bucket/prefix)" -}}
{{- end -}}
{{- if and .Values.server.tls.enabled (not .Values.server.tls.secretName) -}}
{{- fail "server.tls.enabled needs server.tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.server.tls.enabled .Values.stickySessions.istio.enabled -}}
{{- fail "stickySessions.istio cannot hash a header inside the service's own TLS: leave server.tls off and let Istio mTLS encrypt the traffic" -}}
{{- end -}}
{{- end -}}

{{/* Shutdown budget of a session-service pod, all from server.settings.graceSeconds (MEDSAM2_GRACE_S):
     Kubernetes runs preStop (a pause while the endpoints controller takes the pod out of the Services), then sends
     SIGTERM; the server drains streams in flight for up to graceSeconds (a stream in flight takes all of it), then
     closes sessions, the backend and the session store, which exitMarginSeconds covers. tests/integration/
     test_chart.py checks the sum; tests/integration/test_images.py measures the drain of the image itself. */}}
{{- define "medsam2.server.preStopSeconds" -}}5{{- end -}}
{{- define "medsam2.server.exitMarginSeconds" -}}15{{- end -}}
{{- define "medsam2.server.terminationGraceSeconds" -}}
{{- add (include "medsam2.server.preStopSeconds" . | int) (int .Values.server.settings.graceSeconds) (include "medsam2.server.exitMarginSeconds" . | int) -}}
{{- end -}}

{{/* The build Job's image. An ONNX Runtime build (CPU-only installs) needs no TensorRT: its default tag is the
     CPU variant, <appVersion>-cpu (build.Dockerfile with WITH_TENSORRT=0); a TensorRT build, the GPU variant. */}}
{{- define "medsam2.buildJob.image" -}}
{{- $image := .Values.modelRepository.buildJob.image -}}
{{- $suffix := ternary "-cpu" "" (eq (include "medsam2.buildJob.backend" .) "onnxruntime") -}}
{{- printf "%s:%s" $image.repository (default (printf "%s%s" .Chart.AppVersion $suffix) $image.tag) -}}
{{- end -}}
