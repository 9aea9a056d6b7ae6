"""The process kubelet against the emulated API server: real processes, real sockets."""

from __future__ import annotations

import base64
import json
import signal
import urllib.request

from kubernetes import client

from tests.support.e2e_pods import condition, live_pids, pod, terminated
from tests.support.waiting import wait_for

PY = "python"
NS = "default"


def _core(k8s_api) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_api.client())


def _finished(k8s_api, name: str, timeout: float = 60) -> dict:
    return wait_for(lambda: terminated(k8s_api.get("v1/pods", NS, name)), timeout, f"pod {name} to terminate")


def test_pods_bind_the_same_port_on_their_own_ips(k8s_api, kubelet) -> None:
    script = (
        "import os,socket,time;s=socket.socket();s.bind(('0.0.0.0',9000));s.listen();"
        "open('/dev/termination-log','w').write(os.environ['POD_IP']);time.sleep(1)"
    )
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    for name in ("a", "b"):
        _core(k8s_api).create_namespaced_pod(NS, pod(name, [PY, "-c", script], env=env))
    results = {name: _finished(k8s_api, name) for name in ("a", "b")}
    assert [r["exitCode"] for r in results.values()] == [0, 0], kubelet.log_tails()
    ips = {name: k8s_api.get("v1/pods", NS, name)["status"]["podIP"] for name in ("a", "b")}
    assert ips["a"] != ips["b"]
    assert {name: r["message"] for name, r in results.items()} == ips
    assert k8s_api.get("v1/pods", NS, "a")["status"]["phase"] == "Succeeded"


def test_env_follows_kubernetes_expansion_secret_and_downward_api(k8s_api, kubelet) -> None:
    core = _core(k8s_api)
    core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {"token": base64.b64encode(b"t0k3n").decode()}})
    env = [
        {"name": "A", "value": "alpha"},
        {"name": "B", "value": "$(A)-beta $$(A) $(UNDEFINED)"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "WHERE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
    ]
    script = "import json,os,sys;open('/dev/termination-log','w').write(json.dumps([dict(os.environ),sys.argv[1:]]))"
    spec = pod("envy", [PY, "-c", script], args=["$(A)", "$$(A)", "$(B)"], env=env, labels={"team": "ml"})
    spec["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1500m"}}
    core.create_namespaced_pod(NS, spec)
    result = _finished(k8s_api, "envy")
    assert result["exitCode"] == 0, kubelet.log_tails()
    seen, argv = json.loads(result["message"])
    assert seen["B"] == "alpha-beta $(A) $(UNDEFINED)"
    assert (seen["TOKEN"], seen["ME"], seen["WHERE"], seen["LABEL"], seen["CPUS"]) == ("t0k3n", "envy", NS, "ml", "2")
    assert argv == ["alpha", "$(A)", "alpha-beta $(A) $(UNDEFINED)"]


def test_pod_waits_for_a_missing_secret_then_starts(k8s_api, kubelet) -> None:
    core = _core(k8s_api)
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]
    core.create_namespaced_pod(NS, pod("patient", [PY, "-c", "print('ok')"], env=env))

    def waiting_reason() -> str | None:
        statuses = ((k8s_api.get("v1/pods", NS, "patient") or {}).get("status") or {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    assert wait_for(waiting_reason, 30, "CreateContainerConfigError") == "CreateContainerConfigError"
    core.create_namespaced_secret(NS, {"metadata": {"name": "later"}, "stringData": {"k": "v"}, "data": {"k": "dg=="}})
    assert _finished(k8s_api, "patient")["exitCode"] == 0


def test_service_links_and_proxy_reach_a_ready_backend(k8s_api, kubelet) -> None:
    core = _core(k8s_api)
    server = (
        "import http.server,time;time.sleep(1.5)\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "  def do_GET(self):\n"
        "    self.send_response(200);self.end_headers();self.wfile.write(b'pong')\n"
        "http.server.HTTPServer(('0.0.0.0',8080),H).serve_forever()\n"
    )
    probe = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1}
    core.create_namespaced_pod(NS, pod("backend", [PY, "-c", server], labels={"app": "echo"}, readinessProbe=probe,
                                       ports=[{"name": "http", "containerPort": 8080}]))
    core.create_namespaced_service(NS, {
        "metadata": {"name": "echo-svc"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
    })
    wait_for(lambda: condition(k8s_api.get("v1/pods", NS, "backend"), "Running") or
             (k8s_api.get("v1/pods", NS, "backend") or {}).get("status", {}).get("phase") == "Running", 30, "backend running")
    assert condition(k8s_api.get("v1/pods", NS, "backend"), "Ready") == "False"
    wait_for(lambda: condition(k8s_api.get("v1/pods", NS, "backend"), "Ready") == "True", 30, "backend ready")
    cluster_ip = k8s_api.get("v1/services", NS, "echo-svc")["spec"]["clusterIP"]
    backend_ip = k8s_api.get("v1/pods", NS, "backend")["status"]["podIP"]
    with urllib.request.urlopen(f"http://{backend_ip}:8080/", timeout=10) as answer:  # pod IPs: reachable from the host
        assert answer.read() == b"pong"
    fetch = (
        "import os,urllib.request as u;h=os.environ['ECHO_SVC_SERVICE_HOST'];p=os.environ['ECHO_SVC_SERVICE_PORT_WEB']\n"
        "r=u.urlopen(f'http://{h}:{p}/',timeout=10).read()+u.urlopen('http://echo-svc.default.svc/',timeout=10).read()\n"
        "open('/dev/termination-log','w').write(h+' '+r.decode())\n"
    )
    core.create_namespaced_pod(NS, pod("client", [PY, "-c", fetch]))
    result = _finished(k8s_api, "client")
    assert (result["exitCode"], result.get("message")) == (0, f"{cluster_ip} pongpong"), kubelet.log_tails()


def test_exit_code_and_termination_message_reach_the_status(k8s_api, kubelet) -> None:
    core = _core(k8s_api)
    core.create_namespaced_pod(NS, pod("fails", [PY, "-c", "open('/dev/termination-log','w').write('bad input');exit(3)"]))
    core.create_namespaced_pod(NS, pod("logs", [PY, "-c", "import sys;print('to stdout');sys.exit('boom in logs')"],
                                       terminationMessagePolicy="FallbackToLogsOnError"))
    fails, logs = _finished(k8s_api, "fails"), _finished(k8s_api, "logs")
    assert (fails["exitCode"], fails["reason"], fails["message"]) == (3, "Error", "bad input")
    assert logs["exitCode"] == 1 and "boom in logs" in logs["message"] and "to stdout" in logs["message"]
    assert k8s_api.get("v1/pods", NS, "fails")["status"]["phase"] == "Failed"


def test_deleting_a_pod_terminates_its_whole_process_group(k8s_api, kubelet) -> None:
    core = _core(k8s_api)
    # The shell ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    script = "trap '' TERM; sleep 300 & sleep 300 & python -c 'import time; time.sleep(300)' & wait"
    core.create_namespaced_pod(NS, pod("stubborn", ["/bin/sh", "-c", script]))
    pids = wait_for(lambda: len(kubelet.pod_pids(NS, "stubborn")) >= 4 and kubelet.pod_pids(NS, "stubborn"), 30,
                    "the pod's processes")
    core.delete_namespaced_pod("stubborn", NS)
    wait_for(lambda: not live_pids(pids),
             30, "every process of the deleted pod to exit")
    assert k8s_api.get("v1/pods", NS, "stubborn") is None


def test_sigkill_fault_fails_the_pod_with_137(k8s_api, kubelet) -> None:
    _core(k8s_api).create_namespaced_pod(NS, pod("victim", ["sleep", "300"]))
    wait_for(lambda: (k8s_api.get("v1/pods", NS, "victim") or {}).get("status", {}).get("phase") == "Running", 30, "running")
    kubelet.kill_pod(NS, "victim", signal.SIGKILL)
    result = _finished(k8s_api, "victim")
    assert (result["exitCode"], result.get("signal")) == (137, 9)


def test_shared_claim_and_run_as_user_are_honoured(k8s_api, kubelet) -> None:
    core = _core(k8s_api)
    core.create_namespaced_persistent_volume_claim(NS, {
        "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    })
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]
    mounts = [{"name": "data", "mountPath": "/mnt/kiln-e2e/data"}]
    security = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
    write = "import os;open('/mnt/kiln-e2e/data/f','w').write(str(os.getuid()))"
    writer = pod("writer", [PY, "-c", write], volumes=volumes, volumeMounts=mounts)
    writer["spec"]["securityContext"] = security
    core.create_namespaced_pod(NS, writer)
    assert _finished(k8s_api, "writer")["exitCode"] == 0, kubelet.log_tails()
    read = "open('/dev/termination-log','w').write(open('/mnt/kiln-e2e/data/f').read())"
    core.create_namespaced_pod(NS, pod("reader", [PY, "-c", read], volumes=volumes, volumeMounts=mounts))
    assert _finished(k8s_api, "reader")["message"] == "1000"
    assert (kubelet.claim_dir(NS, "shared") / "f").read_text() == "1000"


def test_unsupported_pod_is_refused_with_the_field_named(k8s_api, kubelet) -> None:
    spec = pod("fancy", [PY, "-c", "pass"])
    spec["spec"]["initContainers"] = [{"name": "init", "image": "x", "command": ["true"]}]
    _core(k8s_api).create_namespaced_pod(NS, spec)
    status = wait_for(lambda: (k8s_api.get("v1/pods", NS, "fancy") or {}).get("status", {}).get("phase") == "Failed"
                      and k8s_api.get("v1/pods", NS, "fancy")["status"], 30, "the pod to be refused")
    assert status["reason"] == "UnsupportedByTestKubelet" and "spec.initContainers" in status["message"]


def test_liveness_failure_kills_the_pod(k8s_api, kubelet) -> None:
    probe = {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 2}
    # PID 1 of a container gets SIGTERM only if it handles it: this one does, and says so in its code.
    script = "trap 'exit 42' TERM; sleep 300 & wait"
    _core(k8s_api).create_namespaced_pod(NS, pod("dead", ["/bin/sh", "-c", script], livenessProbe=probe))
    result = _finished(k8s_api, "dead", timeout=30)
    assert result["exitCode"] == 42  # the kubelet's SIGTERM after the failed liveness probe




def test_pod_hostname_is_its_name_and_resolves_to_its_ip(k8s_api, kubelet) -> None:
    script = "import socket;n=socket.gethostname();open('/dev/termination-log','w').write(n+' '+socket.gethostbyname(n))"
    _core(k8s_api).create_namespaced_pod(NS, pod("named", [PY, "-c", script]))
    result = _finished(k8s_api, "named")
    assert result["message"] == f"named {k8s_api.get('v1/pods', NS, 'named')['status']['podIP']}", kubelet.log_tails()


def test_lost_pod_vanishes_without_a_final_status(k8s_api, kubelet) -> None:
    _core(k8s_api).create_namespaced_pod(NS, pod("lost", ["sleep", "300"]))
    pids = wait_for(lambda: kubelet.pod_pids(NS, "lost"), 30, "the pod's processes")
    kubelet.lose_pod(NS, "lost")
    wait_for(lambda: k8s_api.get("v1/pods", NS, "lost") is None, 30, "the pod object gone")
    wait_for(lambda: not live_pids(pids),
             30, "the pod's processes gone")
