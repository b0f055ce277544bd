#!/usr/bin/env node
// A short tour of ironroot/spiffe (run after `tsc -p tsconfig.build.json`): an in-memory P-256 CA
// signer stands in for the HSM, mints a CA, an X.509-SVID and a JWT-SVID, and validates both.
// The end-to-end demo (TPM attestation, HSM, Workload API) arrives with later issues.
import { generateKeyPairSync } from 'node:crypto';
import {
  BundleSet,
  createKeySigner,
  mintJwtSvid,
  mintX509Ca,
  mintX509Svid,
  SpiffeBundle,
  SpiffeId,
  TrustDomain,
  validateJwtSvid,
  verifyX509Svid,
} from '../dist/spiffe/index.js';

const td = TrustDomain.parse('example.org');
const id = SpiffeId.fromSegments(td, 'demo');
const now = new Date();
const inAnHour = new Date(now.getTime() + 3_600_000);

const caSigner = createKeySigner(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
const ca = await mintX509Ca(
  { trustDomain: td, publicKey: caSigner.publicKey, notBefore: now, notAfter: inAnHour },
  caSigner,
);

const workloadKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const svid = await mintX509Svid(
  { spiffeId: id, publicKey: workloadKey.publicKey, notBefore: now, notAfter: inAnHour },
  { certificate: ca, signer: caSigner },
);
// JWTs get their own key, as a SPIRE-style server keeps X.509 and JWT authorities apart.
const jwtSigner = createKeySigner(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
const token = await mintJwtSvid(
  { spiffeId: id, audience: 'reports', expiresAt: inAnHour, keyId: 'demo-1' },
  jwtSigner,
);

// What a federated peer would receive: one SPIFFE bundle for the trust domain.
const bundle = new SpiffeBundle(td, {
  x509Authorities: [ca],
  jwtAuthorities: new Map([['demo-1', jwtSigner.publicKey]]),
  sequenceNumber: 1n,
  refreshHintSeconds: 300,
});
const bundles = new BundleSet([SpiffeBundle.parse(td, bundle.marshal())]);

const x509 = verifyX509Svid([svid], bundles);
const jwt = await validateJwtSvid(token, bundles, 'reports');

const lines = [
  `trust domain   ${td}`,
  `CA             ${ca.subject.replace(/\n/g, ', ')}  (self-signed, ${ca.subjectAltName})`,
  `X.509-SVID     ${svid.subjectAltName}, valid to ${svid.validTo}`,
  `  verified     ${x509.id} via ${x509.chain.length}-certificate path`,
  `JWT-SVID       ${token.slice(0, 40)}… (${token.length} chars)`,
  `  validated    sub=${jwt.id} aud=${jwt.audience.join(',')} exp=${jwt.expiresAt.toISOString()}`,
  `bundle         ${bundle.marshal().length} bytes of JWKS, spiffe_sequence=${bundle.sequenceNumber}`,
];
process.stdout.write(`ironroot/spiffe demo\n${lines.map((l) => `  ${l}`).join('\n')}\n`);
