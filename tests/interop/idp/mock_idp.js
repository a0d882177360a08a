// The OAuth2/OIDC authorization server tests/interop/test_smart.py runs: oauth2-mock-server
// (npm, installed by scripts/interop.sh into target/idp) on loopback, with an RS256 and an ES256
// key, whose access tokens carry what the token request (or the /authorize request before it)
// asks for, so the test can make every token it needs, good or bad, signed by a real IdP.
//
// Usage: node mock_idp.js [PORT] [--exit-on-stdin-close]
//   PORT 0 (the default) lets the system choose. Prints one JSON line on stdout once listening:
//   {"issuer", "jwks_uri", "token_endpoint", "authorization_endpoint", "kids": {"RS256", "ES256"}}.
//   The environment variable FHIRLAKE_IDP_NODE_MODULES names the node_modules holding
//   oauth2-mock-server (default: target/idp/node_modules of this repository).
//
// POST /token (form fields; grant types client_credentials, authorization_code with PKCE,
// password, refresh_token): into the access token go
//   scope                 -> scope (space separated)
//   audience | resource   -> aud
//   patient               -> patient (also returned beside access_token, as SMART's launch context)
//   fhir_user             -> fhirUser
//   expires_in            -> exp = iat + expires_in (negative for an expired token)
//   not_before_in         -> nbf = iat + not_before_in
//   issuer_override       -> iss
//   omit                  -> claims removed, space or comma separated (e.g. "exp")
//   alg (RS256 | ES256)   -> the signing key (default RS256); kid -> that key exactly
// GET /authorize takes the same fields as query parameters (SMART's `aud`, `scope`, and `patient`
// standing for the patient the user picks in a launch/patient flow): they are remembered for the
// code and apply to the token exchanged for it. PKCE: oauth2-mock-server checks code_verifier
// against the code_challenge (plain or S256) and answers 400 when they differ.
//
// POST /oauth/introspect (RFC 7662; oauth2-mock-server's own /introspect answers every token
// as active, so this route does the real check): a resource server authenticated with HTTP Basic credentials
// INTROSPECT_CLIENT_ID / INTROSPECT_CLIENT_SECRET (environment; default fhirlake /
// introspect-secret) learns whether a token this IdP issued is active (not expired, not
// revoked) and its claims; other callers get 401.
//
// Test-only routes: POST /admin/keys {"alg"} adds a new key to the JWKS (a key rotation) and
// answers {"kid"}; POST /admin/revoke {"token"} revokes a token; GET /admin/stats answers
// {"jwks_requests", "introspections"}.
import { createServer } from 'node:http';
import { AsyncLocalStorage } from 'node:async_hooks';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.FHIRLAKE_IDP_NODE_MODULES ?? path.resolve(here, '../../../target/idp/node_modules');
const requireFrom = createRequire(path.join(modules, 'resolve-from-here.js'));
const { OAuth2Issuer, OAuth2Service, Events } = await import(
  pathToFileURL(requireFrom.resolve('oauth2-mock-server')).href
);

const args = process.argv.slice(2);
const port = Number(args.find((a) => /^\d+$/.test(a)) ?? 0);

const issuer = new OAuth2Issuer();
const service = new OAuth2Service(issuer);
const kids = {
  RS256: (await issuer.keys.generate('RS256')).kid,
  ES256: (await issuer.keys.generate('ES256')).kid,
};

// The request being served, for the key choice (made inside oauth2-mock-server, which asks the
// key store for "any key": the store is asked for the one the request names instead).
const current = new AsyncLocalStorage();
const authorizeContexts = new Map();
const AUTHORIZE_FIELDS = ['scope', 'aud', 'audience', 'resource', 'patient', 'fhir_user', 'expires_in',
  'not_before_in', 'issuer_override', 'omit', 'alg', 'kid'];

function fieldsOf(req) {
  const body = req?.body ?? {};
  const fromAuthorize = body.grant_type === 'authorization_code' && typeof body.code === 'string'
    ? authorizeContexts.get(body.code) ?? {} : {};
  return { ...fromAuthorize, ...body };
}

const store = issuer.keys;
const anyKey = store.get.bind(store);
store.get = (kid) => {
  if (kid !== undefined) return anyKey(kid);
  const f = fieldsOf(current.getStore()?.req);
  return anyKey(f.kid ?? kids[f.alg ?? 'RS256'] ?? `unknown-alg-${f.alg}`);
};

service.on(Events.BeforeAuthorizeRedirect, (redirect, req) => {
  const code = redirect.url.searchParams.get('code');
  if (!code) return;
  const ctx = {};
  for (const k of AUTHORIZE_FIELDS) if (typeof req.query?.[k] === 'string') ctx[k] = req.query[k];
  if (ctx.aud !== undefined && ctx.audience === undefined) ctx.audience = ctx.aud;
  delete ctx.aud;
  authorizeContexts.set(code, ctx);
});

service.on(Events.BeforeTokenSigning, (token, req) => {
  // The first token signed for a request is its access token; an id_token follows for some grants.
  req.tokensSigned = (req.tokensSigned ?? 0) + 1;
  if (req.tokensSigned > 1) return;
  const f = fieldsOf(req);
  const p = token.payload;
  if (typeof f.scope === 'string') p.scope = f.scope;
  const aud = f.audience ?? f.resource;
  if (aud !== undefined) p.aud = aud;
  if (f.patient !== undefined) p.patient = f.patient;
  if (f.fhir_user !== undefined) p.fhirUser = f.fhir_user;
  if (f.client_id !== undefined) p.client_id = f.client_id;
  if (f.expires_in !== undefined) p.exp = p.iat + Number(f.expires_in);
  if (f.not_before_in !== undefined) p.nbf = p.iat + Number(f.not_before_in);
  if (f.issuer_override !== undefined) p.iss = f.issuer_override;
  if (f.omit !== undefined) for (const c of String(f.omit).split(/[\s,]+/)) if (c) delete p[c];
  req.accessTokenPayload = p;
});

service.on(Events.BeforeResponse, (response, req) => {
  const p = req.accessTokenPayload;
  if (response.statusCode !== 200 || !p) return;
  if (p.scope !== undefined) response.body.scope = p.scope;
  if (p.patient !== undefined) response.body.patient = p.patient;
  if (typeof p.exp === 'number') response.body.expires_in = p.exp - p.iat;
});

const introspectClient = Buffer.from(
  `${process.env.INTROSPECT_CLIENT_ID ?? 'fhirlake'}:${process.env.INTROSPECT_CLIENT_SECRET ?? 'introspect-secret'}`,
).toString('base64');
const revoked = new Set();
let introspections = 0;
const sendJson = (res, status, body) => {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify(body));
};
service.addRoute('POST', '/oauth/introspect', (req, res) => {
  introspections += 1;
  if (req.headers.authorization !== `Basic ${introspectClient}`) {
    sendJson(res, 401, { error: 'invalid_client' });
    return;
  }
  const token = String(req.body?.token ?? '');
  let claims;
  try {
    claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
  } catch {
    sendJson(res, 200, { active: false });
    return;
  }
  const live = !revoked.has(token) && typeof claims.exp === 'number' && claims.exp * 1000 > Date.now();
  sendJson(res, 200, live ? { active: true, token_type: 'Bearer', ...claims } : { active: false });
});
service.addRoute('POST', '/admin/revoke', (req, res) => {
  revoked.add(String(req.body?.token ?? ''));
  res.setHeader('Content-Type', 'application/json');
  res.end('{}');
});

let jwksRequests = 0;
service.addRoute('POST', '/admin/keys', async (req, res) => {
  const alg = req.body?.alg ?? 'RS256';
  const jwk = await issuer.keys.generate(alg);
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ kid: jwk.kid, alg }));
});
service.addRoute('GET', '/admin/stats', (_req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ jwks_requests: jwksRequests, introspections }));
});

const handler = service.requestHandler;
const server = createServer((req, res) => {
  const pathname = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
  if (req.method === 'GET' && pathname === '/jwks') jwksRequests += 1;
  res.on('finish', () => process.stderr.write(`${req.method} ${req.url} ${res.statusCode}\n`));
  current.run({ req }, () => handler(req, res));
});
await new Promise((resolve, reject) => server.listen(port, '127.0.0.1').once('listening', resolve).once('error', reject));
const url = `http://127.0.0.1:${server.address().port}`;
issuer.url = url;
process.stdout.write(JSON.stringify({
  issuer: url,
  jwks_uri: `${url}/jwks`,
  token_endpoint: `${url}/token`,
  authorization_endpoint: `${url}/authorize`,
  kids,
}) + '\n');

const stop = () => {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (args.includes('--exit-on-stdin-close')) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
}
