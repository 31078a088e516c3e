// tests/interop/jose_peer.mjs — the `jose` npm package as an interop peer of nhid
// tokens (run by tests/integration/test_tokens.sh). Exit 0 on success, 1 otherwise.
//
//   verify JWKS TOKEN_FILE ISS AUD     verify our token with jose and our JWKS
//   thumbprints JWKS                   each kid == jose's RFC 7638 calculateJwkThumbprint
//   sign OUT_DIR ISS AUD SUB X5T       new P-256 key: OUT_DIR/jose.jwks (public) and a token on stdout
import { readFileSync, writeFileSync } from 'node:fs';
import {
  SignJWT, calculateJwkThumbprint, createLocalJWKSet, exportJWK, generateKeyPair, jwtVerify,
} from 'jose';

const [cmd, ...args] = process.argv.slice(2);

async function verify(jwksPath, tokenPath, iss, aud) {
  const jwks = createLocalJWKSet(JSON.parse(readFileSync(jwksPath, 'utf8')));
  const token = readFileSync(tokenPath, 'utf8').trim();
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    algorithms: ['ES256'], issuer: iss, audience: aud, typ: 'JWT',
    requiredClaims: ['exp', 'iat', 'nbf', 'jti', 'sub', 'cnf'],
  });
  if (typeof payload.cnf?.['x5t#S256'] !== 'string') throw new Error('no cnf.x5t#S256');
  console.log(`jose: verified sub=${payload.sub} kid=${protectedHeader.kid}`);
}

async function thumbprints(jwksPath) {
  const { keys } = JSON.parse(readFileSync(jwksPath, 'utf8'));
  if (!keys.length) throw new Error('empty JWKS');
  for (const k of keys) {
    const t = await calculateJwkThumbprint(k, 'sha256');
    if (t !== k.kid) throw new Error(`kid ${k.kid} != jose thumbprint ${t}`);
    console.log(`jose: thumbprint ${t} matches`);
  }
}

async function sign(outDir, iss, aud, sub, x5t) {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  writeFileSync(`${outDir}/jose.jwks`, JSON.stringify({ keys: [{ ...jwk, kid, use: 'sig', alg: 'ES256' }] }));
  const token = await new SignJWT({ roles: ['infer'], cnf: { 'x5t#S256': x5t } })
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid })
    .setIssuer(iss).setSubject(sub).setAudience(aud)
    .setIssuedAt().setNotBefore('0s').setExpirationTime('5m')
    .setJti(crypto.randomUUID())
    .sign(privateKey);
  console.log(token);
}

try {
  if (cmd === 'verify' && args.length === 4) await verify(...args);
  else if (cmd === 'thumbprints' && args.length === 1) await thumbprints(...args);
  else if (cmd === 'sign' && args.length === 5) await sign(...args);
  else { console.error('usage: jose_peer.mjs verify|thumbprints|sign ...'); process.exit(2); }
} catch (e) {
  console.error(`jose: ${e.code ?? ''} ${e.message}`);
  process.exit(1);
}
