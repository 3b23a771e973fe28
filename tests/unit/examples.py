"""Valid examples shared by the unit tests, each written once.

Istio ``spec`` bodies (YAML text): the ``test_api_*`` model tests load them and check what
they parse to, and ``test_api_fuzz.py`` mutates them. Instance registrations: what
``tsunagi run`` sends to ``POST /v1/instances``.
"""

from __future__ import annotations

from typing import Any

from tsunagi.registry import Instance


def instance_document(
    name: str, service: str = "reviews", version: str = "v1", **fields: Any
) -> dict[str, Any]:
    """A valid registration of ``name``, an instance of ``service``'s ``version``;
    ``fields`` add to it or replace its values."""
    return {
        "name": name,
        "service": service,
        "port": 9080,
        "target_port": 20000 + len(name),
        "labels": {"version": version},
        **fields,
    }


def instance(name: str, service: str = "reviews", version: str = "v1") -> Instance:
    return Instance.from_document(instance_document(name, service, version))


# VirtualService: Bookinfo's reviews route (jason to v2, everyone else to v3).
VS_BOOKINFO_REVIEWS = """
hosts:
- reviews
http:
- match:
  - headers:
      end-user:
        exact: jason
  route:
  - destination:
      host: reviews
      subset: v2
- route:
  - destination:
      host: reviews
      subset: v3
"""

# VirtualService: every HTTP route field, plus TCP and TLS routes.
VS_ALL_FIELDS = """
hosts: [reviews.prod.svc.cluster.local]
gateways: [mesh, istio-system/ingress]
exportTo: ["."]
http:
- name: main
  match:
  - name: api
    uri: {prefix: /api}
    method: {exact: GET}
    authority: {regex: "^api\\\\..*$"}
    headers: {x-present: {}, x-env: {prefix: prod}}
    withoutHeaders: {x-debug: {}}
    queryParams: {q: {exact: "1"}}
    port: 9080
    sourceLabels: {app: productpage}
    gateways: [mesh]
    ignoreUriCase: true
    sourceNamespace: bookinfo
    statPrefix: api
  route:
  - destination: {host: reviews, subset: v1, port: {number: 9080}}
    weight: 75
    headers: {request: {set: {x-a: b}}, response: {remove: [x-internal]}}
  - destination: {host: reviews, subset: v2}
    weight: 25
  rewrite: {uri: /v2/api, authority: reviews-v2}
  timeout: 1.5s
  retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,503",
            retryRemoteLocalities: true}
  fault:
    delay: {fixedDelay: 5s, percentage: {value: 10}}
    abort: {httpStatus: 503, percentage: {value: 0.5}}
  mirror: {host: reviews-shadow}
  mirrorPercentage: {value: 50}
  corsPolicy:
    allowOrigins: [{exact: "https://example.com"}]
    allowMethods: [GET, POST]
    allowHeaders: [authorization]
    maxAge: 24h
    allowCredentials: true
  headers:
    request: {add: {x-req: "1"}}
- match: [{uri: {exact: /old}}]
  redirect: {uri: /new, redirectCode: 308, port: 8443, scheme: https}
- match: [{uri: {exact: /health}}]
  directResponse: {status: 200, body: {string: ok}}
- match: [{uri: {prefix: /re}}]
  rewrite: {uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\\\1"}}
  route: [{destination: {host: reviews}}]
tcp:
- match: [{port: 3306, destinationSubnets: [10.0.0.0/8]}]
  route: [{destination: {host: mysql, port: {number: 3306}}}]
tls:
- match: [{sniHosts: [reviews.prod.svc.cluster.local], port: 443}]
  route: [{destination: {host: reviews}}]
"""

# DestinationRule: every traffic policy field.
DR_ALL_FIELDS = """
host: reviews.prod.svc.cluster.local
exportTo: ["*"]
workloadSelector: {labels: {app: gateway}}
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie: {name: user, path: /, ttl: 0s}
      ringHash: {minimumRingSize: 1024}
    localityLbSetting:
      enabled: true
      distribute:
      - from: us-west/zone1/*
        to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}
    warmupDurationSecs: 30s
  connectionPool:
    tcp:
      maxConnections: 100
      connectTimeout: 30ms
      tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}
      maxConnectionDuration: 1h
      idleTimeout: 5m
    http:
      http1MaxPendingRequests: 10
      http2MaxRequests: 1000
      maxRequestsPerConnection: 10
      maxRetries: 3
      idleTimeout: 30s
      h2UpgradePolicy: UPGRADE
      useClientProtocol: true
      maxConcurrentStreams: 100
  outlierDetection:
    consecutive5xxErrors: 7
    consecutiveGatewayErrors: 5
    interval: 5m
    baseEjectionTime: 15m
    maxEjectionPercent: 100
    minHealthPercent: 50
    splitExternalLocalOriginErrors: true
    consecutiveLocalOriginFailures: 5
  tls:
    mode: SIMPLE
    caCertificates: /etc/certs/ca.pem
    subjectAltNames: [reviews.example.com]
    sni: reviews.example.com
    insecureSkipVerify: false
  portLevelSettings:
  - port: {number: 80}
    loadBalancer: {simple: LEAST_REQUEST}
  - port: {number: 443}
    tls: {mode: ISTIO_MUTUAL}
subsets:
- name: canary
  labels: {version: canary}
"""

# ServiceEntry: a mesh-internal service with static endpoints.
SE_STATIC_ENDPOINTS = """
hosts: [mymongodb.somedomain]
addresses: [192.192.192.192/24]
ports: [{number: 27018, name: mongo, protocol: MONGO}]
location: MESH_INTERNAL
resolution: STATIC
endpoints:
- address: 2.2.2.2
- address: 3.3.3.3
  ports: {mongo: 27019}
  labels: {version: v2}
  locality: us-west/zone1
  weight: 10
"""

WORKLOAD_ENTRY = """
address: 2.2.2.2
ports: {http: 8080}
labels: {app: details, version: v1}
network: vm-net
locality: us-east/z1
weight: 3
serviceAccount: details-legacy
"""

# Gateway: Bookinfo's, with HTTPS and a redirect to it.
GATEWAY_BOOKINFO = """
selector: {istio: ingressgateway}
servers:
- port: {number: 8080, name: http, protocol: HTTP}
  hosts: ["*"]
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: [bookinfo/bookinfo.example.com]
  tls: {mode: SIMPLE, credentialName: bookinfo-cert}
  name: secure
- port: {number: 80, name: http-redirect, protocol: HTTP}
  hosts: [bookinfo.example.com]
  tls: {httpsRedirect: true}
"""

SIDECAR = """
workloadSelector: {labels: {app: ratings}}
ingress:
- port: {number: 9080, protocol: HTTP, name: somename}
  defaultEndpoint: 127.0.0.1:8080
  captureMode: IPTABLES
egress:
- port: {number: 9080, protocol: HTTP, name: egresshttp}
  hosts: [prod-us1/*]
- hosts: ["istio-system/*", "./*"]
outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""

PEER_AUTHENTICATION = """
selector: {matchLabels: {app: reviews}}
mtls: {mode: STRICT}
portLevelMtls:
  8080: {mode: DISABLE}
"""

AUTHORIZATION_POLICY = """
selector: {matchLabels: {app: httpbin}}
action: ALLOW
rules:
- from:
  - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
  - source: {namespaces: [test], notIpBlocks: [10.0.0.0/8]}
  to:
  - operation: {methods: [GET], paths: ["/info*"], ports: ["8000"]}
  when:
  - key: request.auth.claims[iss]
    values: ["https://accounts.google.com"]
  - key: destination.port
    notValues: ["9090"]
"""
