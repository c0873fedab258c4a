{{/* The trainer pod template, shared by the PyTorchJob and the Job (trainer.yaml). */}}
{{- define "drivestream.trainerPod" -}}
{{- $t := .Values.trainer -}}
metadata:
  labels:
    {{- include "drivestream.selector" (list . "trainer") | nindent 4 }}
spec:
  {{- if eq $t.kind "job" }}
  restartPolicy: OnFailure
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: 60 # ranks stop together at the next lockstep step
  containers:
    - name: pytorch # the container name the training-operator looks for
      image: {{ include "drivestream.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- if eq $t.kind "pytorchjob" }}
      # torchrun takes --nnodes, --nproc-per-node, --rdzv-* and --max-restarts from the
      # PET_* variables the operator sets from the elastic policy
      command: ["torchrun"]
      args: ["-m", "trainer.worker"]
      {{- else }}
      args: ["train"]
      {{- end }}
      env:
        {{- include "drivestream.kafkaEnv" . | nindent 8 }}
        - name: DRIVESTREAM_GROUP_ID
          value: {{ $t.groupId | quote }}
        - name: DRIVESTREAM_DEVICE
          value: {{ $t.device | quote }}
        - name: DRIVESTREAM_CHECKPOINT_DIR
          value: /data/trainer
        {{- if eq $t.kind "job" }}
        - name: DRIVESTREAM_NPROC
          value: {{ $t.nprocPerNode | quote }}
        - name: DRIVESTREAM_MAX_RESTARTS
          value: {{ $t.maxRestarts | quote }}
        {{- end }}
        {{- with (include "drivestream.extraEnv" $t.env | trim) }}{{ . | nindent 8 }}{{- end }}
      {{- if eq $t.kind "pytorchjob" }}
      ports:
        - name: pytorchjob-port
          containerPort: 23456
      {{- end }}
      volumeMounts:
        - name: data
          mountPath: /data
        - name: dshm # gloo and NCCL use shared memory between local ranks
          mountPath: /dev/shm
        {{- with (include "drivestream.kafkaVolumeMounts" . | trim) }}{{ . | nindent 8 }}{{- end }}
      {{- with $t.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: {{ include "drivestream.fullname" . }}-trainer
    - name: dshm
      emptyDir:
        medium: Memory
    {{- with (include "drivestream.kafkaVolumes" . | trim) }}{{ . | nindent 4 }}{{- end }}
  {{- with (include "drivestream.scheduling" $t | trim) }}{{ . | nindent 2 }}{{- end }}
{{- end }}
