"""SMART on FHIR authorization checked with a real OAuth2/OIDC server and independent clients:
oauth2-mock-server (npm, tests/interop/idp/mock_idp.js) issues RS256 and ES256 access tokens,
boto3's healthlake client creates data stores with an IdentityProviderConfiguration, requests
and fhirpy (PyPI) call the FHIR API with the tokens, and PyJWT + cryptography forge the bad ones.

Usage: test_smart.py FHIRLAKE_BIN WORK_DIR
Run from the repository root. WORK_DIR is emptied and filled. Needs node, and oauth2-mock-server
in target/idp/node_modules (scripts/interop.sh installs it; FHIRLAKE_IDP_NODE_MODULES overrides).
Prints one line per check and 'N passed, N failed'; exits non-zero on failure. Every process it
starts (the server, the IdP) runs in a process group of its own, ended on exit.

Covers: SMART_ON_FHIR_V1 / SMART_ON_FHIR data stores and their Metadata validation; discovery
(.well-known/smart-configuration, CapabilityStatement security) without a token; token checks
(signature from jwks_uri with RS256 and ES256, a JWKS refetch for a new kid, iss, aud, exp, nbf);
scopes v1 and v2 (system, user, patient); the patient compartment (reads, searches, _include,
_revinclude, chains, _has, history, batch, transaction, writes); $export; an attack matrix of
forged tokens; the authorization-code flow with PKCE; a data store without SMART; fhirpy.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import pathlib
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import warnings

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, ForbiddenError

from control_common import check, client, error_of, finish, wait_status

warnings.simplefilter("ignore")

binary = os.path.abspath(sys.argv[1])
work = pathlib.Path(sys.argv[2]).resolve()
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
IDP_SCRIPT = pathlib.Path(__file__).resolve().parent / "idp" / "mock_idp.js"
TIMEOUT = 30
FHIR = "application/fhir+json"
B_MARKERS = ("pat-b", "obs-b", "cond-b", "Bravosmart")

# ---------------------------------------------------------------------------------------------
# Processes: each in a session (process group) of its own, all ended on the way out.
procs = []


def stop_all():
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for p in reversed(procs):
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(5)
    procs.clear()


signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))


def spawn(cmd, log_name, stdin=subprocess.DEVNULL, env=None):
    p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=open(work / log_name, "w"),
                         text=True, start_new_session=True, env=env)
    procs.append(p)
    lines = queue.Queue()

    def pump():
        for line in p.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return p, lines


def next_line(lines, deadline):
    try:
        return lines.get(timeout=max(0.0, deadline - time.time()))
    except queue.Empty:
        return None


def start_idp():
    p, lines = spawn(["node", str(IDP_SCRIPT), "0", "--exit-on-stdin-close"], "idp.stderr",
                     stdin=subprocess.PIPE)
    line = next_line(lines, time.time() + 60)
    if not line:
        sys.exit(f"the mock IdP did not start (see {work / 'idp.stderr'})")
    return json.loads(line)


def start_server():
    """`fhirlake serve` on loopback ports; returns (control endpoint, default store's base)."""
    # The credentials the server introspects opaque tokens with (the mock IdP's defaults).
    env = {**os.environ, "FHIRLAKE_SMART_CLIENT_ID": "fhirlake",
           "FHIRLAKE_SMART_CLIENT_SECRET": "introspect-secret"}
    p, lines = spawn([binary, "--data-dir", str(work / "data"), "serve", "--http", "127.0.0.1:0",
                      "--flight-sql", "127.0.0.1:0", "--datastore-op-interval-secs", "0"], "serve.stderr",
                     env=env)
    endpoint = default_base = grpc = None
    deadline = time.time() + 180
    while not (endpoint and grpc):
        line = next_line(lines, deadline)
        if line is None:
            sys.exit(f"the server did not start (see {work / 'serve.stderr'})")
        m = re.search(r"(http://[^/\s]+)/datastore/", line)
        if m and endpoint is None:
            endpoint = m.group(1)
            m = re.search(r"(http://\S+/r4/)", line)
            default_base = m and m.group(1)
        m = re.search(r"Flight SQL endpoint: (grpc://\S+)", line)
        if m:
            grpc = m.group(1)
    S.grpc = grpc
    return endpoint, default_base


# ---------------------------------------------------------------------------------------------
# HTTP helpers.
def call(method, url, tok=None, body=None, headers=None, **kw):
    h = {"Accept": FHIR}
    if tok is not None:
        h["Authorization"] = f"Bearer {tok}"
    if body is not None:
        h["Content-Type"] = FHIR
        kw["data"] = json.dumps(body)
    h.update(headers or {})
    return requests.request(method, url, headers=h, timeout=TIMEOUT, **kw)


def payload(r):
    try:
        return r.json()
    except ValueError:
        return None


def is_oo(r):
    b = payload(r)
    return isinstance(b, dict) and b.get("resourceType") == "OperationOutcome"


def resources(r):
    """The resources of a Bundle response, OperationOutcome entries left out."""
    b = payload(r)
    if not (isinstance(b, dict) and b.get("resourceType") == "Bundle"):
        return []
    return [e["resource"] for e in b.get("entry", [])
            if "resource" in e and e["resource"].get("resourceType") != "OperationOutcome"]


def refs(r):
    return {f"{x.get('resourceType')}/{x.get('id')}" for x in resources(r)}


def leaks_b(r):
    """Whether a response's resources carry anything of patient B (ids, references, name)."""
    b = payload(r)
    if isinstance(b, dict) and b.get("resourceType") == "Bundle":
        text = json.dumps(b.get("entry", []))
    elif isinstance(b, dict) and b.get("resourceType") == "OperationOutcome":
        return False
    else:
        text = r.text
    return any(m in text for m in B_MARKERS)


def searchset(r):
    b = payload(r)
    return r.status_code == 200 and isinstance(b, dict) and b.get("type") == "searchset"


def empty_searchset(r):
    return searchset(r) and not resources(r) and payload(r).get("total", 0) == 0


def show(r):
    return f"{r.status_code} {r.text[:300]}"


def unauthorized(name, r):
    check(f"{name} -> 401, WWW-Authenticate: Bearer, OperationOutcome",
          r.status_code == 401 and r.headers.get("WWW-Authenticate", "").startswith("Bearer") and is_oo(r),
          f"{r.status_code} {r.headers.get('WWW-Authenticate')!r} {r.text[:200]}")


def forbidden(name, r):
    check(f"{name} -> 403 OperationOutcome", r.status_code == 403 and is_oo(r), show(r))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class S:
    """State shared by the sections."""
    idp = {}
    hl = None
    base = base2 = plain_base = default_base = grpc = None
    metadata = {}


def token(scope, audience="", alg=None, **fields):
    """An access token from the IdP's token endpoint (client_credentials). `audience` defaults to
    the SMART v1 store's endpoint; None leaves aud out. Other fields: see mock_idp.js."""
    form = {"grant_type": "client_credentials", "client_id": "fhirlake-interop", "scope": scope,
            "audience": S.base if audience == "" else audience, "alg": alg, **fields}
    r = requests.post(S.idp["token_endpoint"], data=form, timeout=TIMEOUT)
    if r.status_code != 200:
        raise RuntimeError(f"the IdP refused a token request: {r.status_code} {r.text[:200]}")
    return r.json()["access_token"]


def idp_stats():
    return requests.get(S.idp["issuer"] + "/admin/stats", timeout=TIMEOUT).json()["jwks_requests"]


def good_claims(scope="system/*.read", **over):
    now = int(time.time())
    claims = {"iss": S.idp["issuer"], "aud": S.base, "iat": now, "nbf": now - 10, "exp": now + 600,
              "scope": scope, "client_id": "attacker"}
    claims.update(over)
    return claims


def pkce_pair():
    verifier = secrets.token_urlsafe(48)[:64]
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def authorize(params):
    """GET /authorize without following the redirect; returns the Location's query."""
    r = requests.get(S.idp["authorization_endpoint"], params=params, allow_redirects=False, timeout=TIMEOUT)
    location = r.headers.get("Location", "")
    return r.status_code, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def patient_resource(pid, family, given, gender, birth):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}],
            "gender": gender, "birthDate": birth}


def observation(oid, subject, code, display, value, unit, ident=None):
    o = {"resourceType": "Observation", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
         "subject": {"reference": subject}, "effectiveDateTime": "2024-05-01T10:00:00Z",
         "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}
    if oid:
        o["id"] = oid
    if ident:
        o["identifier"] = [{"system": "urn:fhirlake:interop-smart", "value": ident}]
    return o


def condition(cid, subject):
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": subject},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006",
                                 "display": "Diabetes mellitus type 2"}]}}


# ---------------------------------------------------------------------------------------------
# Sections.
def idp_itself():
    """The harness: the IdP's discovery, JWKS and tokens verify with PyJWT; PKCE is enforced."""
    idp = S.idp
    conf = requests.get(idp["issuer"] + "/.well-known/openid-configuration", timeout=TIMEOUT).json()
    check("IdP: discovery names the issuer, jwks_uri, token and authorization endpoints",
          conf["issuer"] == idp["issuer"] and conf["jwks_uri"] == idp["jwks_uri"]
          and conf["token_endpoint"] == idp["token_endpoint"]
          and conf["authorization_endpoint"] == idp["authorization_endpoint"], conf)
    keys = requests.get(idp["jwks_uri"], timeout=TIMEOUT).json()["keys"]
    check("IdP: the JWKS has its RS256 and ES256 public keys (no private parts)",
          {(k["kid"], k["alg"]) for k in keys} == {(idp["kids"]["RS256"], "RS256"), (idp["kids"]["ES256"], "ES256")}
          and not any("d" in k for k in keys), keys)
    jwks = jwt.PyJWKClient(idp["jwks_uri"], cache_keys=False, timeout=TIMEOUT)
    for alg in ("RS256", "ES256"):
        tok = token("system/*.read", alg=alg, patient="pat-a", fhir_user="Practitioner/p1")
        key = jwks.get_signing_key_from_jwt(tok)
        claims = jwt.decode(tok, key.key, algorithms=[alg], audience=S.base, issuer=idp["issuer"])
        check(f"IdP: a client_credentials token verifies with PyJWT ({alg}, kid from the JWKS) and "
              "carries scope, aud, patient, fhirUser",
              jwt.get_unverified_header(tok)["kid"] == idp["kids"][alg] and claims["scope"] == "system/*.read"
              and claims["aud"] == S.base and claims["patient"] == "pat-a"
              and claims["fhirUser"] == "Practitioner/p1", claims)
    claims = jwt.decode(token("system/*.read", expires_in=-600), options={"verify_signature": False})
    check("IdP: expires_in=-600 makes an expired token", claims["exp"] < time.time() - 500, claims)

    # The authorization-code flow with PKCE (S256): a wrong verifier is refused by the IdP.
    verifier, challenge = pkce_pair()
    status, q = authorize({"response_type": "code", "client_id": "fhirlake-interop",
                           "redirect_uri": "http://127.0.0.1:9/callback", "scope": "launch/patient patient/*.read",
                           "aud": S.base, "state": "s1", "code_challenge": challenge,
                           "code_challenge_method": "S256", "patient": "pat-a"})
    r = requests.post(idp["token_endpoint"], timeout=TIMEOUT, data={
        "grant_type": "authorization_code", "code": q.get("code", ""), "client_id": "fhirlake-interop",
        "redirect_uri": "http://127.0.0.1:9/callback", "code_verifier": pkce_pair()[0]})
    check("IdP: /authorize redirects with code and state; a wrong PKCE code_verifier is refused (400)",
          status == 302 and q.get("state") == "s1" and q.get("code") and r.status_code == 400, f"{status} {q} {r.text[:200]}")


def create_stores():
    hl = S.hl
    idp = S.idp
    S.metadata = {
        "issuer": idp["issuer"],
        "jwks_uri": idp["jwks_uri"],
        "authorization_endpoint": idp["authorization_endpoint"],
        "token_endpoint": idp["token_endpoint"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "patient/*.read", "patient/*.*",
                             "user/*.read", "system/*.read", "system/*.*"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric",
                         "context-standalone-patient", "permission-patient", "permission-user",
                         "permission-v1", "sso-openid-connect"],
    }
    idp_config = {"AuthorizationStrategy": "SMART_ON_FHIR_V1", "FineGrainedAuthorizationEnabled": False,
                  "Metadata": json.dumps(S.metadata)}
    created = hl.create_fhir_datastore(DatastoreName="smart-v1", DatastoreTypeVersion="R4",
                                       IdentityProviderConfiguration=idp_config)
    ds_id = created["DatastoreId"]
    status = wait_status(hl, ds_id, "ACTIVE")
    props = hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]
    S.base = props["DatastoreEndpoint"]
    check("a SMART_ON_FHIR_V1 data store is created and becomes ACTIVE; its endpoint ends /r4/",
          status == "ACTIVE" and S.base.endswith(f"/datastore/{ds_id}/r4/"), f"{status} {props}")
    check("describe returns the IdentityProviderConfiguration as given",
          props.get("IdentityProviderConfiguration") == idp_config, props.get("IdentityProviderConfiguration"))

    for missing in ("token_endpoint", "authorization_endpoint"):
        meta = {k: v for k, v in S.metadata.items() if k != missing}
        code = error_of(hl.create_fhir_datastore, DatastoreName=f"no-{missing}", DatastoreTypeVersion="R4",
                        IdentityProviderConfiguration={**idp_config, "Metadata": json.dumps(meta)})
        check(f"Metadata without {missing}: ValidationException", code and code[0] == "ValidationException", code)
    for i, bad in enumerate(('["not", "an", "object"]', "{not json", '"a string"')):
        code = error_of(hl.create_fhir_datastore, DatastoreName=f"bad-metadata-{i}", DatastoreTypeVersion="R4",
                        IdentityProviderConfiguration={**idp_config, "Metadata": bad})
        check(f"Metadata {bad!r} (not a JSON object): ValidationException",
              code and code[0] == "ValidationException", code)

    v2_meta = {**S.metadata, "capabilities": [*S.metadata["capabilities"], "permission-v2"]}
    v2_config = {"AuthorizationStrategy": "SMART_ON_FHIR", "FineGrainedAuthorizationEnabled": False,
                 "Metadata": json.dumps(v2_meta)}
    created = hl.create_fhir_datastore(DatastoreName="smart-v2", DatastoreTypeVersion="R4",
                                       IdentityProviderConfiguration=v2_config)
    status = wait_status(hl, created["DatastoreId"], "ACTIVE")
    props = hl.describe_fhir_datastore(DatastoreId=created["DatastoreId"])["DatastoreProperties"]
    S.base2 = props["DatastoreEndpoint"]
    check("AuthorizationStrategy SMART_ON_FHIR (v2) is accepted, ACTIVE, described as given",
          status == "ACTIVE" and props.get("IdentityProviderConfiguration") == v2_config, f"{status} {props}")

    created = hl.create_fhir_datastore(DatastoreName="plain", DatastoreTypeVersion="R4")
    wait_status(hl, created["DatastoreId"], "ACTIVE")
    S.plain_base = hl.describe_fhir_datastore(DatastoreId=created["DatastoreId"])["DatastoreProperties"]["DatastoreEndpoint"]


def discovery():
    r = requests.get(S.base + ".well-known/smart-configuration", timeout=TIMEOUT)
    b = payload(r) or {}
    check("GET .well-known/smart-configuration without a token: 200 JSON with the Metadata's "
          "authorization_endpoint, token_endpoint, capabilities",
          r.status_code == 200 and b.get("authorization_endpoint") == S.metadata["authorization_endpoint"]
          and b.get("token_endpoint") == S.metadata["token_endpoint"]
          and set(S.metadata["capabilities"]) <= set(b.get("capabilities") or []), show(r))
    r = requests.get(S.base + "metadata", headers={"Accept": FHIR}, timeout=TIMEOUT)
    cap = payload(r) or {}
    security = (cap.get("rest") or [{}])[0].get("security", {})
    codings = [c for s in security.get("service", []) for c in s.get("coding", [])]
    oauth = [e for e in security.get("extension", [])
             if e.get("url") == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"]
    uris = {e.get("url"): e.get("valueUri") for o in oauth for e in o.get("extension", [])}
    check("GET metadata without a token: 200 CapabilityStatement", r.status_code == 200
          and cap.get("resourceType") == "CapabilityStatement", show(r))
    check("CapabilityStatement rest[0].security.service has the SMART-on-FHIR coding",
          any(c.get("system") == "http://terminology.hl7.org/CodeSystem/restful-security-service"
              and c.get("code") == "SMART-on-FHIR" for c in codings), security)
    check("CapabilityStatement security has the oauth-uris extension (authorize, token)",
          uris.get("authorize") == S.metadata["authorization_endpoint"]
          and uris.get("token") == S.metadata["token_endpoint"], security)


def seed():
    tok = token("system/*.*")
    data = [
        patient_resource("pat-a", "Alphasmart", "Ann", "female", "1970-01-01"),
        patient_resource("pat-b", "Bravosmart", "Bob", "male", "1980-02-02"),
        observation("obs-a1", "Patient/pat-a", "8867-4", "Heart rate", 61, "/min"),
        observation("obs-a2", "Patient/pat-a", "29463-7", "Body weight", 70, "kg"),
        observation("obs-b1", "Patient/pat-b", "8867-4", "Heart rate", 82, "/min"),
        observation("obs-b2", "Patient/pat-b", "2339-0", "Glucose", 99, "mg/dL"),
        condition("cond-a1", "Patient/pat-a"),
        condition("cond-b1", "Patient/pat-b"),
    ]
    statuses = [call("PUT", f"{S.base}{x['resourceType']}/{x['id']}", tok, x).status_code for x in data]
    check("system/*.* token: PUT patients A and B, their Observations and Conditions (200/201)",
          all(s in (200, 201) for s in statuses), statuses)
    tok2 = token("system/*.cruds", audience=S.base2)
    statuses = [call("PUT", f"{S.base2}{x['resourceType']}/{x['id']}", tok2, x).status_code
                for x in (patient_resource("v2-pat", "Vtwo", "Val", "female", "1990-03-03"),
                          observation("v2-obs", "Patient/v2-pat", "8867-4", "Heart rate", 70, "/min"))]
    check("SMART v2 store, system/*.cruds token: PUT a Patient and an Observation (200/201)",
          all(s in (200, 201) for s in statuses), statuses)


def tokens_accepted():
    for alg in ("RS256", "ES256"):
        r = call("GET", S.base + "Patient/pat-a", token("system/*.read", alg=alg))
        check(f"an {alg} token signed by the IdP reads Patient/pat-a (200)",
              r.status_code == 200 and (payload(r) or {}).get("id") == "pat-a", show(r))
    r = call("GET", S.base + "Patient/pat-a", token("system/*.read", audience=S.base.rstrip("/")))
    check("aud = the endpoint without its trailing slash is accepted (200)", r.status_code == 200, show(r))

    # The JWKS is cached, and a new kid (a key rotation at the IdP) makes the server refetch it.
    tok = token("system/*.read")
    before = idp_stats()
    codes = [call("GET", S.base + "Patient/pat-a", tok).status_code for _ in range(5)]
    check("the JWKS is cached: 5 requests with a known kid fetch it no more",
          codes == [200] * 5 and idp_stats() == before, f"{codes} {idp_stats() - before} fetches")
    rotated = requests.post(S.idp["issuer"] + "/admin/keys", json={"alg": "ES256"}, timeout=TIMEOUT).json()["kid"]
    before = idp_stats()
    r = call("GET", S.base + "Patient/pat-a", token("system/*.read", kid=rotated))
    check("after a key rotation at the IdP, a token with the new kid is accepted (one JWKS refetch)",
          r.status_code == 200 and idp_stats() - before == 1, f"{show(r)} {idp_stats() - before} fetches")


def scopes():
    sys_read = token("system/*.read")
    for what in ("Patient/pat-a", "Patient/pat-b", "Observation/obs-b1", "Condition/cond-a1",
                 "Observation/obs-a1/_history/1", "Patient/pat-b/_history"):
        r = call("GET", S.base + what, sys_read)
        check(f"system/*.read: GET {what} (200)", r.status_code == 200, show(r))
    r = call("GET", S.base + "Observation", sys_read)
    check("system/*.read: search Observation sees A's and B's",
          searchset(r) and {"Observation/obs-a1", "Observation/obs-a2", "Observation/obs-b1",
                            "Observation/obs-b2"} <= refs(r), show(r))
    forbidden("system/*.read: POST Observation",
              call("POST", S.base + "Observation", sys_read, observation(None, "Patient/pat-b", "8867-4", "HR", 1, "/min")))
    forbidden("system/*.read: PUT Patient/pat-b",
              call("PUT", S.base + "Patient/pat-b", sys_read, patient_resource("pat-b", "Bravosmart", "X", "male", "1980-02-02")))
    forbidden("system/*.read: DELETE Observation/obs-b2", call("DELETE", S.base + "Observation/obs-b2", sys_read))

    user_obs = token("openid fhirUser user/Observation.read", fhir_user="Practitioner/prac-1")
    r = call("GET", S.base + "Observation/obs-a1", user_obs)
    check("user/Observation.read: GET Observation/obs-a1 (200)", r.status_code == 200, show(r))
    r = call("GET", S.base + "Observation?code=8867-4", user_obs)
    check("user/Observation.read: search Observation?code=8867-4 (200 searchset)", searchset(r), show(r))
    forbidden("user/Observation.read: GET Condition/cond-a1", call("GET", S.base + "Condition/cond-a1", user_obs))
    forbidden("user/Observation.read: search Condition", call("GET", S.base + "Condition", user_obs))
    forbidden("user/Observation.read: POST Observation",
              call("POST", S.base + "Observation", user_obs, observation(None, "Patient/pat-b", "8867-4", "HR", 1, "/min")))
    forbidden("system/Condition.read: GET Observation/obs-a1",
              call("GET", S.base + "Observation/obs-a1", token("system/Condition.read")))
    r = call("GET", S.base + "Patient/pat-a", token("openid profile offline_access"))
    check("a token with no FHIR resource scope is refused (401 or 403, OperationOutcome)",
          r.status_code in (401, 403) and is_oo(r), show(r))

    # SMART v2 scopes on the SMART_ON_FHIR store.
    rs = token("system/Observation.rs", audience=S.base2)
    r = call("GET", S.base2 + "Observation/v2-obs", rs)
    check("v2 system/Observation.rs: GET Observation/v2-obs (200)", r.status_code == 200, show(r))
    r = call("GET", S.base2 + "Observation", rs)
    check("v2 system/Observation.rs: search Observation (200 searchset)", searchset(r), show(r))
    forbidden("v2 system/Observation.rs: POST Observation",
              call("POST", S.base2 + "Observation", rs, observation(None, "Patient/v2-pat", "8867-4", "HR", 1, "/min")))
    forbidden("v2 system/Observation.rs: GET Patient/v2-pat", call("GET", S.base2 + "Patient/v2-pat", rs))
    cud = token("system/Observation.cud", audience=S.base2)
    r = call("POST", S.base2 + "Observation", cud, observation(None, "Patient/v2-pat", "8867-4", "HR", 72, "/min"))
    check("v2 system/Observation.cud: POST Observation (201)", r.status_code == 201, show(r))
    forbidden("v2 system/Observation.cud: GET Observation/v2-obs", call("GET", S.base2 + "Observation/v2-obs", cud))
    pat_v2 = token("launch/patient patient/*.rs", audience=S.base2, patient="v2-pat")
    r = call("GET", S.base2 + "Patient/v2-pat", pat_v2)
    check("v2 patient/*.rs with patient v2-pat: GET Patient/v2-pat (200)", r.status_code == 200, show(r))


def compartment():
    tok = token("launch/patient patient/*.read", patient="pat-a")
    sys_read = token("system/*.read")
    b = S.base
    for what in ("Patient/pat-a", "Observation/obs-a1", "Condition/cond-a1", "Observation/obs-a1/_history/1"):
        r = call("GET", b + what, tok)
        check(f"patient/*.read (patient A): GET {what} (200)", r.status_code == 200, show(r))
    for what in ("Patient/pat-b", "Observation/obs-b1", "Condition/cond-b1", "Observation/obs-b1/_history/1",
                 "Patient/pat-b/_history"):
        forbidden(f"patient/*.read (patient A): GET {what}", call("GET", b + what, tok))

    control = call("GET", b + "Observation?subject=Patient/pat-b", sys_read)
    r = call("GET", b + "Observation?subject=Patient/pat-b", tok)
    check("Observation?subject=Patient/pat-b: system/*.read finds B's two, patient A an empty searchset",
          searchset(control) and refs(control) == {"Observation/obs-b1", "Observation/obs-b2"} and empty_searchset(r),
          f"{show(control)} / {show(r)}")
    r = call("GET", b + "Observation", tok)
    check("patient A: Observation (no parameters) is exactly A's two",
          searchset(r) and refs(r) == {"Observation/obs-a1", "Observation/obs-a2"}, show(r))
    r = call("GET", b + "Patient", tok)
    check("patient A: Patient (no parameters) is only A", searchset(r) and refs(r) == {"Patient/pat-a"}, show(r))
    control = call("GET", b + "Patient?_id=pat-b", sys_read)
    r = call("GET", b + "Patient?_id=pat-b", tok)
    check("Patient?_id=pat-b: system/*.read finds B, patient A an empty searchset",
          searchset(control) and refs(control) == {"Patient/pat-b"} and empty_searchset(r), f"{show(control)} / {show(r)}")
    r = call("GET", b + "Condition?patient=pat-b", tok)
    check("patient A: Condition?patient=pat-b is an empty searchset", empty_searchset(r), show(r))
    r = call("GET", b + "Patient?_id=pat-a&_revinclude=Observation:subject", tok)
    check("patient A: Patient?_id=pat-a&_revinclude=Observation:subject has A and A's Observations only",
          searchset(r) and refs(r) == {"Patient/pat-a", "Observation/obs-a1", "Observation/obs-a2"}, show(r))
    r = call("GET", b + "Observation?_include=Observation:subject", tok)
    check("patient A: Observation?_include=Observation:subject brings nothing of B",
          searchset(r) and "Patient/pat-a" in refs(r) and not leaks_b(r), show(r))
    r = call("GET", b + "Patient?_id=pat-a,pat-b&_revinclude=Observation:subject&_revinclude=Condition:subject", tok)
    check("patient A: Patient?_id=pat-a,pat-b with _revinclude brings nothing of B",
          searchset(r) and not leaks_b(r), show(r))

    control = call("GET", b + "Observation?subject:Patient.name=Bravosmart", sys_read)
    r = call("GET", b + "Observation?subject:Patient.name=Bravosmart", tok)
    check("chain Observation?subject:Patient.name=<B's family>: system/*.read finds B's, patient A nothing of B",
          searchset(control) and {"Observation/obs-b1", "Observation/obs-b2"} <= refs(control)
          and searchset(r) and not leaks_b(r), f"{show(control)} / {show(r)}")
    r = call("GET", b + "Observation?subject.name=Bravosmart", tok)
    check("chain Observation?subject.name=<B's family> (no type): patient A gets nothing of B",
          not leaks_b(r) and r.status_code in (200, 400, 403), show(r))
    control = call("GET", b + "Patient?_has:Observation:subject:code=2339-0", sys_read)
    r = call("GET", b + "Patient?_has:Observation:subject:code=2339-0", tok)
    check("_has on a code only B has: system/*.read finds B, patient A an empty searchset",
          searchset(control) and refs(control) == {"Patient/pat-b"} and empty_searchset(r), f"{show(control)} / {show(r)}")
    r = call("GET", b + "Patient?_has:Observation:subject:code=8867-4", tok)
    check("_has on a code both have: patient A gets at most A",
          searchset(r) and refs(r) <= {"Patient/pat-a"} and not leaks_b(r), show(r))
    for what in ("Observation/_history", "_history", "?_type=Patient,Observation"):
        r = call("GET", b + what, tok)
        check(f"patient A: GET {what} shows nothing of B (403, filtered, or refused)",
              r.status_code < 500 and not leaks_b(r), show(r))
    r = call("POST", b + "Observation/_search", tok, headers={"Content-Type": "application/x-www-form-urlencoded"},
             data="subject=Patient/pat-b")
    check("patient A: POST Observation/_search subject=Patient/pat-b shows nothing of B",
          r.status_code < 500 and not leaks_b(r), show(r))

    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/pat-a"}},
        {"request": {"method": "GET", "url": "Patient/pat-b"}},
        {"request": {"method": "GET", "url": "Observation?subject=Patient/pat-b"}},
    ]}
    r = call("POST", b, tok, batch)
    got = payload(r) or {}
    statuses = [e.get("response", {}).get("status", "") for e in got.get("entry", [])]
    inner = [e.get("resource", {}) for e in got.get("entry", [])]
    check("patient A: a batch reading A and B is 200; A's entry 200, B's entry 403, B's search empty",
          r.status_code == 200 and got.get("type") == "batch-response" and len(statuses) == 3
          and statuses[0].startswith("200") and statuses[1].startswith("403")
          and not any(m in json.dumps(inner[1:]) for m in ("obs-b", "Bravosmart")), show(r))


def compartment_writes():
    b = S.base
    sys_read = token("system/*.read")
    read_only = token("launch/patient patient/*.read", patient="pat-a")
    forbidden("patient/*.read (patient A): POST Observation for A",
              call("POST", b + "Observation", read_only, observation(None, "Patient/pat-a", "8867-4", "HR", 1, "/min")))
    tok = token("launch/patient patient/*.*", patient="pat-a")
    forbidden("patient/*.* (patient A): POST Observation with subject B",
              call("POST", b + "Observation", tok, observation(None, "Patient/pat-b", "8867-4", "HR", 1, "/min", "w-b")))
    r = call("POST", b + "Observation", tok, observation(None, "Patient/pat-a", "8867-4", "HR", 66, "/min", "w-a"))
    check("patient/*.* (patient A): POST Observation with subject A (201)", r.status_code == 201, show(r))
    forbidden("patient/*.* (patient A): PUT Patient/pat-b",
              call("PUT", b + "Patient/pat-b", tok, patient_resource("pat-b", "Bravosmart", "Mallory", "male", "1980-02-02")))
    forbidden("patient/*.* (patient A): PUT Observation/obs-a1 moving it to B",
              call("PUT", b + "Observation/obs-a1", tok, observation("obs-a1", "Patient/pat-b", "8867-4", "HR", 61, "/min")))
    forbidden("patient/*.* (patient A): DELETE Observation/obs-b1", call("DELETE", b + "Observation/obs-b1", tok))
    r1 = call("GET", b + "Observation/obs-b1", sys_read)
    r2 = call("GET", b + "Observation/obs-a1", sys_read)
    r3 = call("GET", b + "Patient/pat-b", sys_read)
    r4 = call("GET", b + "Observation?identifier=urn:fhirlake:interop-smart|w-b", sys_read)
    check("after the refused writes: obs-b1 still there, obs-a1 still A's, B's name unchanged, no Observation for B created",
          r1.status_code == 200 and (payload(r2) or {}).get("subject", {}).get("reference") == "Patient/pat-a"
          and (payload(r3) or {}).get("name", [{}])[0].get("given") == ["Bob"] and empty_searchset(r4),
          f"{r1.status_code} {r2.text[:120]} {r3.text[:120]} {r4.text[:120]}")

    def tx(entries):
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    post_a = {"fullUrl": "urn:uuid:7f1e6a52-6a2e-4f57-9a8e-0d4b8a1d1a01",
              "resource": observation(None, "Patient/pat-a", "8867-4", "HR", 67, "/min", "tx-a"),
              "request": {"method": "POST", "url": "Observation"}}
    put_b = {"fullUrl": f"{b}Observation/obs-tx-b",
             "resource": observation("obs-tx-b", "Patient/pat-b", "8867-4", "HR", 90, "/min", "tx-b"),
             "request": {"method": "PUT", "url": "Observation/obs-tx-b"}}
    forbidden("patient/*.* (patient A): a transaction writing for A and B", call("POST", b, tok, tx([post_a, put_b])))
    r1 = call("GET", b + "Observation/obs-tx-b", sys_read)
    r2 = call("GET", b + "Observation?identifier=urn:fhirlake:interop-smart|tx-a", sys_read)
    check("the refused transaction wrote nothing (B's PUT 404, A's POST not found by identifier)",
          r1.status_code == 404 and empty_searchset(r2), f"{show(r1)} / {show(r2)}")
    r = call("POST", b, tok, tx([post_a]))
    check("patient/*.* (patient A): a transaction writing only for A (200)",
          r.status_code == 200 and (payload(r) or {}).get("type") == "transaction-response", show(r))


def export():
    """$export needs a system-level read scope. The permitted kick-off runs first and is waited
    for (a data store runs one export at a time); a kick-off wrongly accepted is cancelled."""
    hdrs = {"Accept": FHIR, "Prefer": "respond-async"}
    tok = token("system/*.read")
    r = call("GET", S.base + "$export?_type=Patient,Observation", tok, headers=hdrs)
    location = r.headers.get("Content-Location", "")
    check("$export with system/*.read: 202 and a Content-Location", r.status_code == 202 and location, show(r))
    if location:
        unauthorized("the export status URL without a token", requests.get(location, timeout=TIMEOUT))
        deadline = time.time() + 120
        s = call("GET", location, tok)
        while s.status_code == 202 and time.time() < deadline:
            time.sleep(0.5)
            s = call("GET", location, tok)
        manifest = payload(s) or {}
        outputs = manifest.get("output", [])
        check("the export status URL with the token ends 200 with a manifest listing Patient and Observation",
              s.status_code == 200 and {"Patient", "Observation"} <= {o.get("type") for o in outputs}, show(s))
        check("the manifest says requiresAccessToken: true (its files need the token)",
              manifest.get("requiresAccessToken") is True, manifest.get("requiresAccessToken"))
        if outputs:
            url = outputs[0]["url"]
            unauthorized("an export file URL without a token", requests.get(url, timeout=TIMEOUT))
            f = call("GET", url, tok, headers={"Accept": "application/fhir+ndjson"})
            check("an export file URL with the token (200 NDJSON)", f.status_code == 200
                  and all(json.loads(line).get("resourceType") for line in f.text.splitlines() if line), show(f))
    for scope, extra in (("launch/patient patient/*.read", {"patient": "pat-a"}), ("user/*.read", {})):
        r = call("GET", S.base + "$export", token(scope, **extra), headers=hdrs)
        forbidden(f"$export with {scope}", r)
        if r.status_code == 202 and r.headers.get("Content-Location"):
            call("DELETE", r.headers["Content-Location"], tok)


def attacks():
    b = S.base
    target = b + "Patient/pat-a"
    rs_kid, es_kid = S.idp["kids"]["RS256"], S.idp["kids"]["ES256"]
    unauthorized("no Authorization header", requests.get(target, headers={"Accept": FHIR}, timeout=TIMEOUT))
    unauthorized("an expired token (exp 10 minutes ago)", call("GET", target, token("system/*.read", expires_in=-600)))
    unauthorized("nbf 10 minutes ahead", call("GET", target, token("system/*.read", not_before_in=600)))
    unauthorized("a token without exp", call("GET", target, token("system/*.read", omit="exp")))
    unauthorized("a wrong iss (signed by the IdP)",
                 call("GET", target, token("system/*.read", issuer_override="http://127.0.0.1:9/not-the-issuer")))
    unauthorized("aud = another SMART data store's endpoint", call("GET", target, token("system/*.read", audience=S.base2)))
    unauthorized("aud = the plain data store's endpoint", call("GET", target, token("system/*.read", audience=S.plain_base)))
    unauthorized("a token without aud", call("GET", target, token("system/*.read", audience=None)))
    unauthorized("the v1 store's token on the v2 store",
                 call("GET", S.base2 + "Patient/v2-pat", token("system/*.read system/*.rs")))

    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = idp_stats()
    for i in range(3):
        unauthorized(f"signed by a key not in the JWKS, unknown kid #{i + 1}",
                     call("GET", target, jwt.encode(good_claims(), mine, "RS256", headers={"kid": f"attacker-{i}"})))
    fetched = idp_stats() - before
    check(f"unknown kids trigger at most one JWKS refetch each ({fetched} for 3)", fetched <= 3, fetched)
    unauthorized("signed by a key not in the JWKS, with the IdP's RS256 kid",
                 call("GET", target, jwt.encode(good_claims(), mine, "RS256", headers={"kid": rs_kid})))
    mine_ec = ec.generate_private_key(ec.SECP256R1())
    unauthorized("signed by an EC key not in the JWKS, with the IdP's ES256 kid",
                 call("GET", target, jwt.encode(good_claims(), mine_ec, "ES256", headers={"kid": es_kid})))
    public_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(mine.public_key(), as_dict=True)
    unauthorized("a header carrying its own key (jwk)",
                 call("GET", target, jwt.encode(good_claims(), mine, "RS256", headers={"kid": "embedded", "jwk": public_jwk})))

    # jku pointing to an attacker's JWKS on loopback: refused, and that JWKS is never fetched.
    hits = []

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = json.dumps({"keys": [{**public_jwk, "kid": "jku-key", "alg": "RS256"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        jku = f"http://127.0.0.1:{attacker.server_address[1]}/jwks"
        r = call("GET", target, jwt.encode(good_claims(), mine, "RS256", headers={"kid": "jku-key", "jku": jku}))
        unauthorized("a jku header naming an attacker's JWKS", r)
        check("the attacker's jku JWKS was never fetched", not hits, hits)
    finally:
        attacker.shutdown()
        attacker.server_close()

    header, claims = {"alg": "none", "typ": "JWT", "kid": rs_kid}, good_claims("system/*.*")
    unauthorized("alg none (unsigned, empty signature)", call("GET", target, f"{b64url_json(header)}.{b64url_json(claims)}."))
    unauthorized("alg none with an uppercase name (NONE)",
                 call("GET", target, f"{b64url_json({**header, 'alg': 'NONE'})}.{b64url_json(claims)}."))

    # HS256 with the RSA public key's PEM as the HMAC secret (algorithm confusion).
    rsa_pub = jwt.PyJWK({**next(k for k in requests.get(S.idp["jwks_uri"], timeout=TIMEOUT).json()["keys"]
                                if k["kid"] == rs_kid)}).key
    for fmt_name, fmt in (("SubjectPublicKeyInfo", serialization.PublicFormat.SubjectPublicKeyInfo),
                          ("PKCS1", serialization.PublicFormat.PKCS1)):
        pem = rsa_pub.public_bytes(serialization.Encoding.PEM, fmt)
        signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': rs_kid})}.{b64url_json(good_claims())}"
        sig = b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
        unauthorized(f"HS256 signed with the RSA public key's PEM ({fmt_name}) as the secret",
                     call("GET", target, f"{signing_input}.{sig}"))

    # Tampered payloads: a valid token's claims changed, its signature kept.
    def tamper(tok, **changes):
        h, p, s = tok.split(".")
        claims = json.loads(unb64url(p))
        claims.update(changes)
        return f"{h}.{b64url_json(claims)}.{s}"
    unauthorized("a valid token's scope changed to system/*.* (signature kept)",
                 call("POST", b + "Observation", tamper(token("system/*.read"), scope="system/*.*"),
                      observation(None, "Patient/pat-b", "8867-4", "HR", 1, "/min", "tamper")))
    unauthorized("a valid patient token's patient changed to B (signature kept)",
                 call("GET", b + "Patient/pat-b", tamper(token("launch/patient patient/*.read", patient="pat-a"),
                                                         patient="pat-b")))
    es = token("system/*.read", alg="ES256")
    h, p, s = es.split(".")
    raw = bytearray(unb64url(s))
    raw[5] ^= 0x01
    unauthorized("an ES256 token with one signature bit flipped", call("GET", target, f"{h}.{p}.{b64url(bytes(raw))}"))
    unauthorized("a garbage token", call("GET", target, "not-a-jwt"))
    unauthorized("three dots of garbage", call("GET", target, "a.b.c"))
    unauthorized("an empty Bearer", requests.get(target, headers={"Accept": FHIR, "Authorization": "Bearer "},
                                                 timeout=TIMEOUT))
    basic = base64.b64encode(b"fhirlake-interop:secret").decode()
    unauthorized("Authorization: Basic on a SMART data store",
                 requests.get(target, headers={"Accept": FHIR, "Authorization": f"Basic {basic}"}, timeout=TIMEOUT))
    unauthorized("a valid token sent only as ?access_token= (no Authorization header)",
                 requests.get(target + "?access_token=" + token("system/*.read"), headers={"Accept": FHIR},
                              timeout=TIMEOUT))
    unauthorized("POST Observation without a token",
                 call("POST", b + "Observation", None, observation(None, "Patient/pat-b", "8867-4", "HR", 1, "/min")))
    unauthorized("a batch without a token",
                 call("POST", b, None, {"resourceType": "Bundle", "type": "batch",
                                        "entry": [{"request": {"method": "GET", "url": "Patient/pat-a"}}]}))


def authorization_code():
    """A standalone launch: /authorize with PKCE, the code exchanged at /token, then the FHIR API."""
    verifier, challenge = pkce_pair()
    redirect = "http://127.0.0.1:9/callback"
    status, q = authorize({"response_type": "code", "client_id": "fhirlake-interop", "redirect_uri": redirect,
                           "scope": "openid fhirUser launch/patient patient/*.read", "aud": S.base,
                           "state": "st-42", "code_challenge": challenge, "code_challenge_method": "S256",
                           "patient": "pat-a", "alg": "ES256"})
    r = requests.post(S.idp["token_endpoint"], timeout=TIMEOUT, data={
        "grant_type": "authorization_code", "code": q.get("code", ""), "client_id": "fhirlake-interop",
        "redirect_uri": redirect, "code_verifier": verifier})
    body = payload(r) or {}
    check("auth code + PKCE: 302 with code and state, the code exchanged for an access token and patient A",
          status == 302 and q.get("state") == "st-42" and r.status_code == 200 and body.get("access_token")
          and body.get("patient") == "pat-a" and body.get("token_type") == "Bearer", f"{status} {q} {r.text[:300]}")
    tok = body.get("access_token", "")
    r = call("GET", S.base + f"Patient/{body.get('patient')}", tok)
    check("auth code + PKCE: the token reads the launch patient (200)", r.status_code == 200, show(r))
    forbidden("auth code + PKCE: the token reading Patient/pat-b", call("GET", S.base + "Patient/pat-b", tok))
    r = call("GET", S.base + "Observation", tok)
    check("auth code + PKCE: search Observation is only A's",
          searchset(r) and refs(r) and all((x.get("subject") or {}).get("reference") == "Patient/pat-a"
                                           for x in resources(r)), show(r))


def plain_store():
    for name, base in (("a data store created without IdentityProviderConfiguration", S.plain_base),
                       ("the default data store", S.default_base)):
        if not base:
            check(f"{name}: its base URL is known", False, base)
            continue
        cap = requests.get(base + "metadata", timeout=TIMEOUT)
        r = requests.post(base + "Patient", timeout=TIMEOUT, headers={"Content-Type": FHIR},
                          data=json.dumps({"resourceType": "Patient", "name": [{"family": "Plainstore"}]}))
        pid = r.headers.get("Location", "").split("/Patient/")[-1].split("/")[0]
        g = requests.get(f"{base}Patient/{pid}", timeout=TIMEOUT)
        s = requests.get(base + "Patient?family=Plainstore", timeout=TIMEOUT)
        check(f"{name}: no token needed on loopback (metadata 200, POST 201, read 200, search 200)",
              cap.status_code == 200 and r.status_code == 201 and g.status_code == 200 and searchset(s),
              f"{cap.status_code} {r.status_code} {g.status_code} {s.status_code} {r.text[:200]}")


def with_fhirpy():
    sys_client = SyncFHIRClient(S.base, authorization=f"Bearer {token('system/*.read')}",
                                requests_config={"timeout": TIMEOUT})
    pat = sys_client.reference("Patient", "pat-a").to_resource()
    check("fhirpy, system/*.read: reference(Patient, pat-a).to_resource()",
          pat["name"][0]["family"] == "Alphasmart", pat)
    found = sys_client.resources("Patient").search(family="Bravosmart").fetch()
    check("fhirpy, system/*.read: search Patient family=Bravosmart finds B", [p.id for p in found] == ["pat-b"], found)
    pat_client = SyncFHIRClient(S.base, authorization=f"Bearer {token('launch/patient patient/*.read', patient='pat-a')}",
                                requests_config={"timeout": TIMEOUT})
    obs = pat_client.resources("Observation").fetch_all()
    check("fhirpy, patient/*.read (A): every Observation fetched (all pages) is A's",
          len(obs) >= 2 and all(o["subject"]["reference"] == "Patient/pat-a" for o in obs), [o.id for o in obs])
    got = pat_client.resources("Observation").search(subject="Patient/pat-b").fetch()
    check("fhirpy, patient/*.read (A): search subject=Patient/pat-b is empty", got == [], got)
    try:
        pat_client.reference("Patient", "pat-b").to_resource()
        check("fhirpy, patient/*.read (A): reading Patient/pat-b raises ForbiddenError", False, "it was returned")
    except ForbiddenError:
        check("fhirpy, patient/*.read (A): reading Patient/pat-b raises ForbiddenError", True)
    try:
        SyncFHIRClient(S.base, requests_config={"timeout": TIMEOUT}).resources("Patient").fetch()
        check("fhirpy without a token raises AuthorizationError", False, "it was answered")
    except AuthorizationError:
        check("fhirpy without a token raises AuthorizationError", True)


def introspection():
    """A data store whose metadata names an introspection_endpoint and no jwks_uri: tokens are
    checked by asking the IdP (RFC 7662) with the server's client credentials."""
    meta = {k: v for k, v in S.metadata.items() if k != "jwks_uri"}
    meta["introspection_endpoint"] = S.idp["issuer"] + "/oauth/introspect"
    config = {"AuthorizationStrategy": "SMART_ON_FHIR_V1", "Metadata": json.dumps(meta)}
    created = S.hl.create_fhir_datastore(DatastoreName="smart-introspect", DatastoreTypeVersion="R4",
                                         IdentityProviderConfiguration=config)
    wait_status(S.hl, created["DatastoreId"], "ACTIVE")
    base = S.hl.describe_fhir_datastore(DatastoreId=created["DatastoreId"])["DatastoreProperties"]["DatastoreEndpoint"]
    stats = lambda: requests.get(S.idp["issuer"] + "/admin/stats", timeout=TIMEOUT).json()["introspections"]
    before = stats()
    r = call("GET", base + "Patient", token("system/*.read", audience=base))
    check("introspection: an active token is accepted after asking the IdP",
          r.status_code == 200 and stats() == before + 1, f"{show(r)} {stats() - before} introspections")
    r = call("GET", base + "Patient", token("system/*.read", audience=base, expires_in=-600))
    unauthorized("introspection: an expired token (inactive at the IdP)", r)
    # (another scope than the token above, so it is a token the server has not seen yet)
    revoked = token("system/Patient.read", audience=base)
    requests.post(S.idp["issuer"] + "/admin/revoke", json={"token": revoked}, timeout=TIMEOUT)
    unauthorized("introspection: a revoked token", call("GET", base + "Patient", revoked))
    unauthorized("introspection: a token for another audience",
                 call("GET", base + "Patient", token("system/*.read", audience=S.base)))
    r = call("GET", base + "Patient", token("patient/*.read launch/patient", audience=base, patient="pat-a"))
    check("introspection: scopes from the answer apply (patient scope, no Observation write)",
          r.status_code == 200, show(r))


def flight_sql():
    """The same SMART tokens over Flight SQL (ADBC): a system/ or user/ read scope per table
    of the token's own data store; patient scopes, other data stores and no token refused."""
    import adbc_driver_flightsql.dbapi as flight_sql

    def query(sql, datastore, tok=None):
        kw = {"adbc.flight.sql.rpc.call_header.x-fhirlake-datastore": datastore}
        if tok:
            kw["adbc.flight.sql.authorization_header"] = f"Bearer {tok}"
        try:
            with flight_sql.connect(S.grpc, db_kwargs=kw, autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(sql)
                return cur.fetchall()
        except Exception as e:  # noqa: BLE001 (ADBC raises its own error classes)
            return e

    # The lake catches up within about a second of the writes seeded above.
    system = token("system/*.read")
    deadline = time.time() + 30
    rows = query("SELECT count(*) FROM patient", "smart-v1", system)
    while isinstance(rows, Exception) or rows[0][0] < 2:
        if time.time() > deadline:
            break
        time.sleep(0.5)
        rows = query("SELECT count(*) FROM patient", "smart-v1", system)
    check("Flight SQL: a system/*.read token queries its SMART data store's tables",
          not isinstance(rows, Exception) and rows[0][0] >= 2, rows)
    obs = token("user/Observation.read")
    rows = query("SELECT count(*) FROM observation", "smart-v1", obs)
    check("Flight SQL: user/Observation.read reads the observation table",
          not isinstance(rows, Exception), rows)
    err = query("SELECT count(*) FROM patient", "smart-v1", obs)
    check("Flight SQL: user/Observation.read cannot read the patient table",
          isinstance(err, Exception) and "scope" in str(err), err)
    err = query("SELECT count(*) FROM patient", "smart-v1",
                token("launch/patient patient/*.read", patient="pat-a"))
    check("Flight SQL: a patient-level token is refused (SQL cannot be confined to a compartment)",
          isinstance(err, Exception) and "compartment" in str(err), err)
    err = query("SELECT count(*) FROM plain.patient", "smart-v1", system)
    check("Flight SQL: a SMART token does not reach another data store's tables",
          isinstance(err, Exception) and "own data store" in str(err), err)
    err = query("SELECT count(*) FROM patient", "smart-v1")
    check("Flight SQL: without a token, a SMART data store's tables are refused",
          isinstance(err, Exception) and "SMART" in str(err), err)
    err = query("SELECT count(*) FROM patient", "smart-v1", "not-a-jwt")
    check("Flight SQL: a bad token is refused", isinstance(err, Exception), err)
    rows = query("SELECT 1", "plain")
    check("Flight SQL: the open loopback endpoint still serves the other data stores",
          not isinstance(rows, Exception) and rows[0][0] == 1, rows)


def section(name, fn):
    """Runs one section; an exception in it is a failed check, and the next section still runs."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        check(f"{name}: ran to its end", False, f"{type(e).__name__}: {e}")


try:
    S.idp = start_idp()
    print(f"# mock IdP at {S.idp['issuer']}", flush=True)
    endpoint, S.default_base = start_server()
    print(f"# server at {endpoint}", flush=True)
    S.hl = client(endpoint)
    section("data stores", create_stores)
    if S.base:
        section("the IdP", idp_itself)
        section("discovery", discovery)
        section("test data", seed)
        section("accepted tokens", tokens_accepted)
        section("scopes", scopes)
        section("patient compartment", compartment)
        section("patient compartment writes", compartment_writes)
        section("$export", export)
        section("attacks", attacks)
        section("authorization code", authorization_code)
        section("fhirpy", with_fhirpy)
        section("introspection", introspection)
        section("Flight SQL", flight_sql)
    section("data stores without SMART", plain_store)
finally:
    stop_all()
finish()
