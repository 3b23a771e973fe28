"""``tsunagi demo``: the control plane, Bookinfo with sidecars, and the first rules.

Everything runs as child processes of this one; Ctrl-C stops them in reverse order (the
workloads drain and deregister first, then the control plane).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tsunagi.client import Client, Rejected, Unreachable
from tsunagi.demo import certificates
from tsunagi.demo.tasks import MESH_CONFIG, RULES, walkthrough

WORKLOADS = [
    ("details", "v1"),
    ("ratings", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
    ("productpage", "v1"),
]
AUTHORIZER = ("ext-authz", 8000)
"""The sample external authorizer's service and port, as Istio's ``samples/extauthz`` has
them and ``mesh-config.yaml``'s provider names them."""
GATEWAY = ("istio-ingressgateway", "istio=ingressgateway")
"""The ingress gateway's name and label, as Istio's Bookinfo expects them."""
GATEWAY_PORT = 8080
"""The port ``bookinfo-gateway.yaml``'s server names: where the gateway serves the page."""
HTTPS_PORT = 8443
"""The port ``bookinfo-gateway-https.yaml``'s server names: the page over HTTPS."""


def _tsunagi(*args: str) -> list[str]:
    return [sys.executable, "-m", "tsunagi.cli.main", *args]


def _wait_up(client: Client, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the control plane exited; is port 15014 or 15012 in use?")
        try:
            client.request("GET", "/healthz", timeout=1)
            return
        except Rejected:
            # It answers. On a first start the client was made before `tsunagi up` wrote
            # its token (so: 401); the caller makes a new client, which reads it.
            return
        except Unreachable:
            time.sleep(0.1)
    raise RuntimeError("the control plane did not come up")


def _apply(client: Client, path: Path, text: str = "", what: str = "") -> None:
    """Apply ``path`` (or ``text``, reported as ``what``) and wait for the proxies."""
    body = {"text": text or path.read_text(), "filename": str(path)}
    reply = client.request("POST", "/v1/apply", body)
    client.request(
        "GET",
        "/v1/wait",
        query={"revision": reply["revision"], "timeout": 20},
        timeout=25,
        ok=(200, 504),
    )
    print(f"  applied {what or path.name}")


def _gateway_listening(port: int = GATEWAY_PORT, timeout: float = 10) -> bool:
    """Whether the ingress gateway accepts connections on ``port`` (it binds the port once
    its Gateway is pushed to it)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _drive_traffic(url: str, rate: float, stop: threading.Event) -> None:
    """GET ``url`` ``rate`` times a second until ``stop``, so the dashboard has something
    to draw; failures are part of the picture (a fault rule), so they are not reported."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while not stop.wait(1.0 / rate):
        try:
            with opener.open(url, timeout=5) as reply:
                reply.read()
        except OSError:
            pass


def _dashboard_url(state_dir: Path, token: str) -> str:
    from tsunagi.cli.dashboard import URL_FILE, SignInRefused, dashboard_url

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return dashboard_url((state_dir / URL_FILE).read_text().strip(), token)
        except OSError:
            time.sleep(0.1)
        except SignInRefused:
            break
    return "(not reachable: see the control plane's log above)"


def run_demo(state_dir: Path, port: int, traffic: float = 0.0, access_log: bool = True) -> int:
    """Run until Ctrl-C; return the exit code. ``traffic``: requests per second the demo
    sends to the product page itself (0: none)."""
    env = {**os.environ, "TSUNAGI_STATE_DIR": str(state_dir)}
    env.pop("TSUNAGI_SERVER", None)
    children: list[subprocess.Popen[bytes]] = []
    stop = False
    quit_traffic = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting the control plane (state in {state_dir})")
        # Own process groups: Ctrl-C reaches only us, and we stop the children in order.
        # Every request traced and logged: a demo is for looking at what happens.
        up = ["up", "--state-dir", str(state_dir), "--trace-sampling", "100"]
        # The External Authorization task's provider (sample-ext-authz-http).
        up += ["--mesh-config", str(MESH_CONFIG)]
        cp = subprocess.Popen(
            _tsunagi(*up, *(["--access-log"] if access_log else [])), env=env, process_group=0
        )
        children.append(cp)
        client = Client.from_env(state=str(state_dir))
        _wait_up(client, cp)
        client = Client.from_env(state=str(state_dir))
        _apply(client, RULES / "destination-rule-all.yaml")
        for service, version in WORKLOADS:
            extra = ["--inbound-port", str(port)] if service == "productpage" else []
            cmd = _tsunagi(
                "run",
                "--service",
                service,
                "--port",
                "9080",
                "--version",
                version,
                # Istio's Bookinfo service accounts, so its security tasks' YAML works as is.
                "--service-account",
                f"bookinfo-{service}",
                *extra,
                "--",
                sys.executable,
                "-m",
                "tsunagi.demo.bookinfo",
                service,
            )
            children.append(subprocess.Popen(cmd, env=env, process_group=0))
        # The authorizer, in the mesh as Istio's task deploys its sample; it decides only
        # once a CUSTOM policy (authorization-ext-authz.yaml) sends it requests.
        authz_service, authz_port = AUTHORIZER
        authorizer = _tsunagi(
            *("run", "--service", authz_service, "--port", str(authz_port), "--version", "v1"),
            *("--", sys.executable, "-m", "tsunagi.demo.ext_authz"),
        )
        children.append(subprocess.Popen(authorizer, env=env, process_group=0))
        # The ingress gateway: an Envoy with no app, serving bookinfo-gateway.yaml's port.
        name, label = GATEWAY
        gateway = _tsunagi("gateway", "--name", name, "--label", label)
        children.append(subprocess.Popen(gateway, env=env, process_group=0))
        deadline = time.monotonic() + 60
        while (
            len(client.request("GET", "/v1/resources", query={"kind": "workloads"})["items"])
            < len(WORKLOADS) + 2  # and the authorizer and the gateway
        ):
            if stop or time.monotonic() > deadline or any(c.poll() is not None for c in children):
                raise RuntimeError("a workload failed to start; see the log above")
            time.sleep(0.2)
        _apply(client, RULES / "reviews-50-50.yaml")
        _apply(client, RULES / "bookinfo-gateway.yaml")
        # HTTPS at the gateway, with a certificate of the demo's own CA.
        tls = certificates.write_demo_certificates(state_dir / "demo-tls")
        secret = certificates.secret_yaml(tls)
        _apply(client, tls["cert"], secret, f"the Secret {certificates.SECRET}")
        _apply(client, RULES / "bookinfo-gateway-https.yaml")
        host = certificates.HOST
        if _gateway_listening(HTTPS_PORT):
            https = (
                f"curl --resolve {host}:{HTTPS_PORT}:127.0.0.1 --cacert {tls['ca']} "
                f"https://{host}:{HTTPS_PORT}/productpage"
            )
        else:
            https = f"(port {HTTPS_PORT} did not open: is it in use? see the log above)"
        page = f"http://127.0.0.1:{port}/productpage"
        if _gateway_listening():
            through = entry = f"http://127.0.0.1:{GATEWAY_PORT}/productpage"
        else:
            through = f"(port {GATEWAY_PORT} did not open: is it in use? see the log above)"
            entry = page
        if traffic > 0:
            threading.Thread(
                target=_drive_traffic, args=(entry, traffic, quit_traffic), daemon=True
            ).start()
            sending = f"\n  Traffic: the demo sends {traffic:g} requests a second to {entry}."
        else:
            sending = "\n  Traffic: reload the page, or restart with `tsunagi demo --traffic 5`."
        dashboard = _dashboard_url(state_dir, client.token)
        print(
            f"""
Tsunagi is running Bookinfo with {len(WORKLOADS)} sidecars, Istio's ingress gateway and an
external authorizer that answers as Istio's sample does (ext-authz: sample-ext-authz-http).

  Open   {through}   (through the ingress gateway, as Istio's
         bookinfo-gateway.yaml routes it; directly: {page})
         and reload a few times:
         reviews alternate between v1 (no stars) and v3 (red stars) — a 50/50 split.
  HTTPS  {https}
         (bookinfo-gateway-https.yaml; the certificate is the Secret
         {certificates.SECRET}: tsunagi get secrets; which one the gateway holds:
         tsunagi proxy-config secret NAME, NAME from tsunagi proxy-status)

  Next, route the user "jason" to reviews v2 (black stars):
         tsunagi apply -f {RULES / "virtual-service-reviews-test-v2.yaml"} --wait
         then sign in as jason on the page.

{walkthrough()}

  See it:  tsunagi proxy-status      tsunagi get virtualservices -o yaml
  Watch:   {dashboard}
           the service graph, request charts, traces and config. The link signs you
           in once, within a minute; `tsunagi dashboard` opens a fresh one any time.
           Each sidecar's access log lines go to this terminal, marked with its name;
           traces are at http://127.0.0.1:9411/api/v2/traces.{sending}
  State:   {state_dir}   (TSUNAGI_STATE_DIR)

Press Ctrl-C to stop everything.
""",
            flush=True,
        )
        while not stop and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stop else 1
    except (RuntimeError, Unreachable, Rejected) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        quit_traffic.set()
        print("stopping…", flush=True)
        for c in reversed(children[1:]):
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children[1:]:
            try:
                c.wait(15)
            except subprocess.TimeoutExpired:
                c.kill()
        if children and children[0].poll() is None:
            children[0].send_signal(signal.SIGTERM)
            children[0].wait(10)
