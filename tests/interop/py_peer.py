#!/usr/bin/python3
"""tests/interop/py_peer.py — Debian's python3-jwcrypto and python3-jwt as interop
peers of nhid tokens (run with /usr/bin/python3 by tests/integration/test_tokens.sh).

  verify-jwcrypto JWKS TOKEN_FILE ISS AUD   verify our token with jwcrypto + our JWKS
  verify-pyjwt    JWKS TOKEN_FILE ISS AUD   the same with PyJWT
  thumbprints     JWKS                      each kid == jwcrypto's RFC 7638 thumbprint
  sign-jwcrypto   OUT_DIR ISS AUD SUB X5T   new P-256 key: OUT_DIR/jwcrypto.jwks, token on stdout
  sign-pyjwt      OUT_DIR ISS AUD SUB X5T   new P-256 key: OUT_DIR/pyjwt.jwks, token on stdout
  forge           KIND JWKS ISS AUD SUB X5T an attacker's token on stdout (KIND: none, hs256-pem,
                                            hs256-pem-nonl); the JWKS key's PEM is the HMAC key
Exit 0 on success, 1 on failure, 2 on usage.
"""
import base64
import hashlib
import hmac
import json
import sys
import time
import uuid

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk as jc_jwk
from jwcrypto import jwt as jc_jwt


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(pub):
    """RFC 7638 §3.2 by hand: required members, sorted, no whitespace."""
    canon = json.dumps({k: pub[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def claims(iss, aud, sub, x5t):
    now = int(time.time())
    return {"iss": iss, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + 300,
            "jti": str(uuid.uuid4()), "roles": ["infer"], "cnf": {"x5t#S256": x5t}}


def read_token(path):
    with open(path) as f:
        return f.read().strip()


def verify_jwcrypto(jwks_path, token_path, iss, aud):
    with open(jwks_path) as f:
        keyset = jc_jwk.JWKSet.from_json(f.read())
    t = jc_jwt.JWT(jwt=read_token(token_path), key=keyset, algs=["ES256"],
                   check_claims={"iss": iss, "aud": aud, "exp": None, "nbf": None, "jti": None})
    c = json.loads(t.claims)
    assert isinstance(c["cnf"]["x5t#S256"], str)
    print(f"jwcrypto: verified sub={c['sub']}")


def verify_pyjwt(jwks_path, token_path, iss, aud):
    with open(jwks_path) as f:
        keyset = pyjwt.PyJWKSet.from_json(f.read())
    token = read_token(token_path)
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    c = pyjwt.decode(token, key.key, algorithms=["ES256"], audience=aud, issuer=iss,
                     options={"require": ["exp", "iat", "nbf", "jti", "sub"]})
    assert isinstance(c["cnf"]["x5t#S256"], str)
    print(f"pyjwt: verified sub={c['sub']}")


def thumbprints(jwks_path):
    with open(jwks_path) as f:
        doc = json.load(f)
    assert doc["keys"], "empty JWKS"
    for k in doc["keys"]:
        t = jc_jwk.JWK(**k).thumbprint()
        if t != k["kid"] or thumbprint(k) != k["kid"]:
            raise AssertionError(f"kid {k['kid']} != jwcrypto {t} / by hand {thumbprint(k)}")
        print(f"jwcrypto: thumbprint {t} matches")


def sign_jwcrypto(out_dir, iss, aud, sub, x5t):
    key = jc_jwk.JWK.generate(kty="EC", crv="P-256")
    pub = json.loads(key.export_public())
    kid = key.thumbprint()
    with open(f"{out_dir}/jwcrypto.jwks", "w") as f:
        json.dump({"keys": [dict(pub, kid=kid, use="sig", alg="ES256")]}, f)
    t = jc_jwt.JWT(header={"alg": "ES256", "typ": "JWT", "kid": kid}, claims=claims(iss, aud, sub, x5t))
    t.make_signed_token(key)
    print(t.serialize())


def sign_pyjwt(out_dir, iss, aud, sub, x5t):
    priv = ec.generate_private_key(ec.SECP256R1())
    pub = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(priv.public_key()))
    kid = thumbprint(pub)
    with open(f"{out_dir}/pyjwt.jwks", "w") as f:
        json.dump({"keys": [dict(pub, kid=kid, use="sig", alg="ES256")]}, f)
    print(pyjwt.encode(claims(iss, aud, sub, x5t), priv, algorithm="ES256", headers={"kid": kid, "typ": "JWT"}))


def forge(kind, jwks_path, iss, aud, sub, x5t):
    with open(jwks_path) as f:
        k = json.load(f)["keys"][0]
    body = b64u(json.dumps(claims(iss, aud, sub, x5t)).encode())
    if kind == "none":
        head = b64u(json.dumps({"alg": "none", "typ": "JWT", "kid": k["kid"]}).encode())
        print(f"{head}.{body}.")
        return
    pem = jc_jwk.JWK(**k).export_to_pem()  # the verifier's public key, as an HMAC secret
    if kind == "hs256-pem-nonl":
        pem = pem.rstrip(b"\n")
    elif kind != "hs256-pem":
        raise SystemExit(2)
    head = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": k["kid"]}).encode())
    mac = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    print(f"{head}.{body}.{b64u(mac)}")


COMMANDS = {
    "verify-jwcrypto": (verify_jwcrypto, 4), "verify-pyjwt": (verify_pyjwt, 4),
    "thumbprints": (thumbprints, 1), "sign-jwcrypto": (sign_jwcrypto, 5),
    "sign-pyjwt": (sign_pyjwt, 5), "forge": (forge, 6),
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS or len(sys.argv) - 2 != COMMANDS[sys.argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        COMMANDS[sys.argv[1]][0](*sys.argv[2:])
    except Exception as e:  # any failure of the peer is a test failure, with its reason
        print(f"{sys.argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
