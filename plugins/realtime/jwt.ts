/**
 * Tokens for subscribers and publishers, checked by the same verifier as the
 * auth plugin (plugin-api/jwt.ts): algorithms fixed by config, keys from
 * config or a JWKS, iss/aud/exp/nbf with clock tolerance.
 */
import { createJwtVerifier, InvalidToken, type JwtConfig as VerifierConfig } from '../../plugin-api/jwt.js';
import type { Principal } from './access.js';

export { InvalidToken };

export interface JwtConfig extends VerifierConfig {
  /** Cookie that may carry the token. */
  cookie?: string;
  /** Query parameter that may carry the token (EventSource and WebSocket cannot set headers). */
  queryParam: string;
}

export type Verifier = (token: string) => Promise<Principal>;

/** Builds the verifier from config; throws BEXT_ERR_CONFIG_INVALID naming the bad key. */
export async function createVerifier(cfg: JwtConfig, baseDir: string): Promise<Verifier> {
  const verify = await createJwtVerifier(cfg, { baseDir, where: '$.plugins.realtime.jwt', plugin: 'realtime' });
  return async (token) => {
    const { payload, expiresAt } = await verify(token);
    return { sub: typeof payload.sub === 'string' ? payload.sub : null, claims: payload as Record<string, unknown>, expiresAt: Number.isFinite(expiresAt) ? expiresAt : null };
  };
}
