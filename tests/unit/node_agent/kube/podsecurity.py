"""The Pod Security Standards' field rules, "baseline" and "restricted", as a pure check of a Pod
manifest: ``violations(pod)`` names each rule the Pod breaks (empty: it meets "restricted").

Written from https://kubernetes.io/docs/concepts/security/pod-security-standards/ as of
Kubernetes 1.34; each rule is named by the check ID Pod Security Admission gives it
(``k8s.io/pod-security-admission/policy``), so a failure reads like the API server's refusal.
Stricter than admission in one place: the relaxation for Pods in a user namespace
(``hostUsers: false``) is left out, since our Pods never ask for one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Json = Mapping[str, Any]

#: Baseline: capabilities a container may add (Docker's default set).
BASELINE_CAPABILITIES = frozenset(
    {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
     "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
)  # fmt: skip
#: Restricted: the only capability a container may add (after dropping ALL).
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Baseline: the namespaced, isolated sysctls (1.32's set).
SAFE_SYSCTLS = frozenset(
    {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
     "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
     "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
     "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
     "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
)  # fmt: skip
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
#: Restricted: the volume kinds a Pod may use.
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
_HANDLERS = ("httpGet", "tcpSocket")


def violations(pod: Json) -> list[str]:
    """Every "baseline" and "restricted" rule ``pod`` breaks, as ``"<check>: <where>"``."""
    return [*baseline(pod), *restricted(pod)]


def containers(spec: Json) -> Iterator[tuple[str, Json]]:
    """Each container of every kind, with where it is (``containers[rank]``)."""
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(kind) or []:
            yield f"{kind}[{container.get('name')}]", container


def baseline(pod: Json) -> Iterator[str]:
    yield from _baseline_pod(pod)
    for where, container in containers(pod["spec"]):
        yield from _baseline_container(where, container)


def restricted(pod: Json) -> Iterator[str]:
    spec = pod["spec"]
    pod_sc = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"restrictedVolumes: {volume['name']} is {sorted(kinds - RESTRICTED_VOLUMES)}"
    if pod_sc.get("runAsNonRoot") is False:
        yield "runAsNonRoot: pod sets false"
    if pod_sc.get("runAsUser") == 0:
        yield "runAsUser: pod runs as 0"
    seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in SECCOMP_TYPES:
        yield f"seccompProfile_restricted: pod is {seccomp}"
    for where, container in containers(spec):
        yield from _restricted_container(where, container, pod_sc)


def _baseline_pod(pod: Json) -> Iterator[str]:
    spec = pod["spec"]
    pod_sc = spec.get("securityContext") or {}
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        yield "hostProcess: pod"
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"hostNamespaces: {field}"
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield f"hostPathVolumes: {volume['name']}"
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield f"sysctls: {sysctl['name']}"
    yield from _apparmor("pod", pod_sc)
    yield from _selinux("pod", pod_sc)
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield "seccompProfile_baseline: pod"
    for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        allowed = value in ("", "runtime/default") or value.startswith("localhost/")
        if key.startswith(_APPARMOR_ANNOTATION) and not allowed:
            yield f"appArmorProfile: annotation {key}"


def _baseline_container(where: str, container: Json) -> Iterator[str]:
    sc = container.get("securityContext") or {}
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        yield f"hostProcess: {where}"
    if sc.get("privileged"):
        yield f"privileged: {where}"
    added = set((sc.get("capabilities") or {}).get("add") or [])
    if added - BASELINE_CAPABILITIES:
        yield f"capabilities_baseline: {where} adds {sorted(added - BASELINE_CAPABILITIES)}"
    if any(port.get("hostPort") for port in container.get("ports") or []):
        yield f"hostPorts: {where}"
    if any((handler.get(kind) or {}).get("host") for handler in _handlers(container)
           for kind in _HANDLERS):  # fmt: skip
        yield f"hostProbesAndHostLifecycle: {where}"
    yield from _apparmor(where, sc)
    yield from _selinux(where, sc)
    if sc.get("procMount", "Default") != "Default":
        yield f"procMount: {where}"
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        yield f"seccompProfile_baseline: {where}"


def _restricted_container(where: str, container: Json, pod_sc: Json) -> Iterator[str]:
    sc = container.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        yield f"allowPrivilegeEscalation: {where} must set false"
    non_root = sc.get("runAsNonRoot")
    if non_root is False or (non_root is None and pod_sc.get("runAsNonRoot") is not True):
        yield f"runAsNonRoot: {where}"
    if sc.get("runAsUser") == 0:
        yield f"runAsUser: {where} runs as 0"
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if seccomp is None and (pod_sc.get("seccompProfile") or {}).get("type") is None:
        yield f"seccompProfile_restricted: pod or {where} must set it"
    elif seccomp is not None and seccomp not in SECCOMP_TYPES:
        yield f"seccompProfile_restricted: {where} is {seccomp}"
    capabilities = sc.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        yield f"capabilities_restricted: {where} must drop ALL"
    added = set(capabilities.get("add") or [])
    if added - RESTRICTED_CAPABILITIES:
        yield f"capabilities_restricted: {where} adds {sorted(added - RESTRICTED_CAPABILITIES)}"


def _handlers(container: Json) -> Iterator[Json]:
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            yield container[probe]
    yield from ((container.get("lifecycle") or {}).values())


def _apparmor(where: str, sc: Json) -> Iterator[str]:
    profile = sc.get("appArmorProfile")
    if profile is not None and profile.get("type") not in APPARMOR_TYPES:
        yield f"appArmorProfile: {where} is {profile.get('type')}"


def _selinux(where: str, sc: Json) -> Iterator[str]:
    options = sc.get("seLinuxOptions") or {}
    if options.get("type", "") not in SELINUX_TYPES:
        yield f"seLinuxOptions: {where} type {options['type']}"
    if options.get("user") or options.get("role"):
        yield f"seLinuxOptions: {where} sets user or role"
