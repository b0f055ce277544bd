import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkConfigSafety, loadConfig, prepareDirectories } from '../../src/server/config/index.js';
import { redactSecrets } from '../../src/server/config/load.js';
import { postgresConnection } from '../../src/server/datastore/open.js';
import { ConfigFileError, ConfigInvalidError, ConfigUnsafeError } from '../../src/server/errors.js';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'ironroot-config-'));
}

function writeConfig(text: string): string {
  const file = join(tempDir(), 'server.yaml');
  writeFileSync(file, text);
  return file;
}

function invalid(run: () => unknown): ConfigInvalidError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigInvalidError) return error;
    throw error;
  }
  throw new Error('expected ConfigInvalidError');
}

describe('server config', () => {
  it('fills every default when the file names only the trust domain', () => {
    const config = loadConfig({ file: writeConfig('trust_domain: example.org\n') });
    expect(config).toEqual({
      trust_domain: 'example.org',
      data_dir: '/var/lib/ironroot',
      bind_address: '0.0.0.0:8081',
      admin_socket: '/run/ironroot-server/admin.sock',
      admin_allowed_uids: [0],
      key_manager: 'pkcs11:token=ironroot',
      development: false,
      log_level: 'info',
      log_format: 'json',
      health_address: '127.0.0.1:8080',
      datastore: { type: 'sqlite' },
      ca_ttl: 86400,
      ca_key_type: 'ec-p256',
      default_x509_svid_ttl: 3600,
      default_jwt_svid_ttl: 300,
      agent_svid_ttl: 3600,
      attestation_rate_limit: { per_second: 5, burst: 10 },
    });
  });

  it('starts from flags alone, without a file', () => {
    const config = loadConfig({
      overrides: {
        trust_domain: 'flags.test',
        data_dir: '/srv/ir',
        key_manager: 'memory:',
        development: true,
      },
    });
    expect(config).toMatchObject({ trust_domain: 'flags.test', data_dir: '/srv/ir', key_manager: 'memory:' });
  });

  it('lets flags override the file', () => {
    const file = writeConfig('trust_domain: file.test\nadmin_socket: /run/a.sock\n');
    const config = loadConfig({ file, overrides: { admin_socket: '/run/b.sock' } });
    expect(config.admin_socket).toBe('/run/b.sock');
    expect(config.trust_domain).toBe('file.test');
  });

  it('names a missing required key', () => {
    const error = invalid(() => loadConfig({ file: writeConfig('data_dir: /srv\n') }));
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.issues).toEqual(['trust_domain: missing; allowed: a trust domain name such as example.org']);
  });

  it('names the key path, the bad value and the allowed values for an enum', () => {
    const error = invalid(() => loadConfig({ file: writeConfig('trust_domain: a.test\nlog_level: loud\n') }));
    expect(error.issues).toEqual([
      'log_level: got "loud"; allowed: one of "trace", "debug", "info", "warn", "error", "fatal"',
    ]);
  });

  it('rejects a bad duration with the allowed forms', () => {
    const error = invalid(() => loadConfig({ file: writeConfig('trust_domain: a.test\nca_ttl: 1 day\n') }));
    expect(error.issues).toEqual(['ca_ttl: got "1 day"; allowed: a duration such as 90s, 30m, 24h or 7d']);
  });

  it('defaults the re-quote interval to 60s and leaves the deadline to follow it', () => {
    const tpm = (yaml: string) =>
      loadConfig({
        file: writeConfig(
          `trust_domain: a.test\ntpm_attestation:\n  ek_trust: any\n  measured_boot: none\n${yaml}`,
        ),
      }).tpm_attestation;
    expect(tpm('')?.reattest_interval).toBe(60);
    expect(tpm('')?.reattest_deadline).toBeUndefined();
    expect(tpm('  reattest_interval: 2s\n  reattest_deadline: 5s\n')).toMatchObject({
      reattest_interval: 2,
      reattest_deadline: 5,
    });
  });

  it('names tpm_attestation.reattest_interval when it is below 2s or not a duration', () => {
    const issues = (yaml: string) =>
      invalid(() =>
        loadConfig({
          file: writeConfig(
            `trust_domain: a.test\ntpm_attestation:\n  ek_trust: any\n  measured_boot: none\n${yaml}`,
          ),
        }),
      ).issues;
    expect(issues('  reattest_interval: 1s\n')).toEqual([
      'tpm_attestation.reattest_interval: got "1s"; allowed: a duration such as 90s, 30m, 24h or 7d, at least 2s',
    ]);
    expect(issues('  reattest_interval: often\n')).toEqual([
      'tpm_attestation.reattest_interval: got "often"; allowed: a duration such as 90s, 30m, 24h or 7d',
    ]);
    expect(issues('  reattest_deadline: soon\n')).toEqual([
      'tpm_attestation.reattest_deadline: got "soon"; allowed: a duration such as 90s, 30m, 24h or 7d',
    ]);
  });

  it('rejects an upper-case trust domain', () => {
    const error = invalid(() => loadConfig({ overrides: { trust_domain: 'Example.org' } }));
    expect(error.issues).toEqual([
      'trust_domain: got "Example.org"; allowed: lowercase letters, digits, ".", "-" and "_" (e.g. example.org)',
    ]);
  });

  it('rejects a bad bind address, a relative path and a negative uid by path', () => {
    const file = writeConfig(
      'trust_domain: a.test\nbind_address: localhost\ndata_dir: var/lib\nadmin_allowed_uids: [0, -1]\n',
    );
    const error = invalid(() => loadConfig({ file }));
    expect(error.issues).toEqual([
      'data_dir: got "var/lib"; allowed: an absolute path',
      'bind_address: got "localhost"; allowed: host:port, e.g. 127.0.0.1:8080 or [::1]:8080, port 0..65535',
      'admin_allowed_uids[1]: got -1; allowed: at least 0',
    ]);
  });

  it('rejects an unknown key and lists the allowed ones', () => {
    const error = invalid(() => loadConfig({ file: writeConfig('trust_domain: a.test\ntrustdomain: b\n') }));
    expect(error.issues).toHaveLength(1);
    expect(error.issues[0]).toMatch(
      /^trustdomain: unknown key; allowed keys: trust_domain, data_dir, bind_address,/,
    );
  });

  it('rejects a key manager it does not know, hiding a PIN in the message', () => {
    const error = invalid(() =>
      loadConfig({ file: writeConfig('trust_domain: a.test\nkey_manager: "hsm:token=x;pin-value=1234"\n') }),
    );
    expect(error.issues).toEqual([
      'key_manager: got "hsm:token=x;pin-value=REDACTED"; allowed: a PKCS#11 URI (pkcs11:token=…), disk:/absolute/dir or memory:',
    ]);
    expect(error.message).not.toContain('1234');
  });

  it('reports a file that is not YAML, and one that is a list', () => {
    expect(() => loadConfig({ file: writeConfig('trust_domain: [\n') })).toThrow(ConfigFileError);
    expect(() => loadConfig({ file: writeConfig('- a\n- b\n') })).toThrow(/must hold a mapping/);
    expect(() => loadConfig({ file: '/nonexistent/server.yaml' })).toThrow(/cannot read config file/);
  });

  it('refuses a memory key manager outside development mode', () => {
    const config = loadConfig({ overrides: { trust_domain: 'a.test', key_manager: 'memory:' } });
    expect(() => checkConfigSafety(config)).toThrow(ConfigUnsafeError);
    expect(() => checkConfigSafety(config)).toThrow(/set development: true/);
  });

  it('refuses a memory key manager over a PostgreSQL datastore, even in development mode', () => {
    const config = loadConfig({
      file: writeConfig(
        'trust_domain: a.test\nkey_manager: "memory:"\ndevelopment: true\n' +
          'datastore: { type: postgres, connection_string: "postgresql://ir@db/ir", tls: { mode: disable } }\n',
      ),
    });
    expect(() => checkConfigSafety(config)).toThrow(ConfigUnsafeError);
    expect(() => checkConfigSafety(config)).toThrow(/"memory:" cannot serve a PostgreSQL datastore/);
    const sqlite = loadConfig({
      overrides: { trust_domain: 'a.test', key_manager: 'memory:', development: true },
    });
    expect(() => checkConfigSafety(sqlite)).not.toThrow();
  });

  it('warns loudly for a disk key manager in development mode', () => {
    const config = loadConfig({
      overrides: { trust_domain: 'a.test', key_manager: 'disk:/srv/keys', development: true },
    });
    expect(checkConfigSafety(config).warnings).toEqual([
      'DEVELOPMENT MODE: CA and JWT keys are held by disk:/srv/keys, not an HSM; never use this server for real workloads',
    ]);
  });

  it('refuses a world-writable data dir', () => {
    const dir = join(tempDir(), 'data');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    const config = loadConfig({ overrides: { trust_domain: 'a.test', data_dir: dir } });
    expect(() => checkConfigSafety(config)).toThrow(
      /data_dir .* is world-writable \(mode 777\); run chmod o-w/,
    );
  });

  it('refuses a world-writable admin socket directory', () => {
    const dir = join(tempDir(), 'run');
    mkdirSync(dir);
    chmodSync(dir, 0o1777);
    const config = loadConfig({
      overrides: { trust_domain: 'a.test', admin_socket: join(dir, 'admin.sock') },
    });
    expect(() => checkConfigSafety(config)).toThrow(
      /admin_socket directory .* is world-writable \(mode 1777\)/,
    );
  });

  it('creates missing directories with private modes', () => {
    const base = tempDir();
    const config = loadConfig({
      overrides: {
        trust_domain: 'a.test',
        data_dir: join(base, 'd'),
        admin_socket: join(base, 'r', 'a.sock'),
      },
    });
    prepareDirectories(config);
    expect(statSync(join(base, 'd')).mode & 0o777).toBe(0o700);
    expect(statSync(join(base, 'r')).mode & 0o777).toBe(0o750);
  });
});

describe('server config: CA, bundle endpoint and OIDC keys', () => {
  it('reads nested sections with their defaults', () => {
    const config = loadConfig({
      file: writeConfig(
        [
          'trust_domain: a.test',
          'jwt_issuer: https://oidc.a.test',
          'upstream_authority: { cert_file: /etc/ir/up.crt, key_file: /etc/ir/up.key }',
          'bundle_endpoint: { profile: https_spiffe }',
          'oidc_discovery: { address: "127.0.0.1:9000" }',
        ].join('\n'),
      ),
    });
    expect(config.bundle_endpoint).toEqual({
      address: '0.0.0.0:8443',
      profile: 'https_spiffe',
      refresh_hint: 300,
    });
    expect(config.oidc_discovery).toEqual({ address: '127.0.0.1:9000' });
    expect(config.upstream_authority).toEqual({ cert_file: '/etc/ir/up.crt', key_file: '/etc/ir/up.key' });
  });

  it('names an unknown nested key with the keys allowed there', () => {
    const error = invalid(() =>
      loadConfig({
        file: writeConfig('trust_domain: a.test\nbundle_endpoint: { profile: https_spiffe, port: 1 }\n'),
      }),
    );
    expect(error.issues).toEqual([
      'bundle_endpoint.port: unknown key; allowed keys: address, profile, cert_file, key_file, refresh_hint',
    ]);
  });

  it('requires a serving certificate for the https_web profile', () => {
    const error = invalid(() =>
      loadConfig({ file: writeConfig('trust_domain: a.test\nbundle_endpoint: {}\n') }),
    );
    expect(error.issues).toEqual([
      'bundle_endpoint.cert_file: missing; allowed: profile https_web needs cert_file and key_file (the serving certificate)',
    ]);
  });

  it('requires jwt_issuer for OIDC discovery, and an https issuer', () => {
    const missing = invalid(() =>
      loadConfig({ file: writeConfig('trust_domain: a.test\noidc_discovery: {}\n') }),
    );
    expect(missing.issues).toEqual([
      'jwt_issuer: missing; allowed: oidc_discovery needs jwt_issuer (the https:// issuer URL the discovery document names)',
    ]);
    const http = invalid(() =>
      loadConfig({ file: writeConfig('trust_domain: a.test\njwt_issuer: http://x.test\n') }),
    );
    expect(http.issues).toEqual(['jwt_issuer: got "http://x.test"; allowed: an https:// URL']);
  });
});

describe('server config: start-up warnings and key files', () => {
  it('warns when the default X.509-SVID TTL outlasts what the CA lifetime allows', () => {
    const config = loadConfig({
      overrides: { trust_domain: 'a.test', key_manager: 'pkcs11:token=t' },
      file: writeConfig('trust_domain: a.test\nca_ttl: 6h\ndefault_x509_svid_ttl: 2h\n'),
    });
    expect(checkConfigSafety(config).warnings).toEqual([
      "default_x509_svid_ttl (7200s) is longer than the 3600s a CA of ca_ttl 21600s has left when its successor takes over; SVIDs will be cut to the CA's expiry. Raise ca_ttl to at least 43200s or lower default_x509_svid_ttl",
    ]);
  });

  it('gives no TTL warning for the defaults', () => {
    const config = loadConfig({ overrides: { trust_domain: 'a.test' } });
    expect(checkConfigSafety(config).warnings).toEqual([]);
  });

  it('refuses an upstream key file that others can read', () => {
    const dir = tempDir();
    const key = join(dir, 'up.key');
    writeFileSync(key, 'k', { mode: 0o644 });
    chmodSync(key, 0o644);
    const file = writeConfig(
      `trust_domain: a.test\nupstream_authority: { cert_file: ${dir}/up.crt, key_file: ${key} }\n`,
    );
    const config = loadConfig({ file });
    expect(() => checkConfigSafety(config)).toThrow(
      `upstream_authority.key_file ${key} is readable by others (mode 644); run chmod 600 ${key}`,
    );
    chmodSync(key, 0o600);
    expect(() => checkConfigSafety(config)).not.toThrow();
  });
});

describe('server config: datastore', () => {
  const load = (datastore: string) =>
    loadConfig({ file: writeConfig(`trust_domain: a.test\ndatastore: ${datastore}\n`) }).datastore;
  const lines = (datastore: string) => invalid(() => load(datastore)).issues;

  it('reads the old spelling sqlite, { type: sqlite }, and PostgreSQL with its pool default', () => {
    expect(load('sqlite')).toEqual({ type: 'sqlite' });
    expect(load('{ type: sqlite }')).toEqual({ type: 'sqlite' });
    expect(
      load('{ type: postgres, connection_string: "postgresql://ir@db/ir", tls: { mode: verify-full } }'),
    ).toEqual({
      type: 'postgres',
      connection_string: 'postgresql://ir@db/ir',
      pool: { max_connections: 10 },
      tls: { mode: 'verify-full' },
    });
    expect(
      load(
        '{ type: postgres, connection_string_file: /etc/ir/pg, pool: { max_connections: 4, idle_timeout: 30s }, tls: { mode: disable } }',
      ),
    ).toMatchObject({ connection_string_file: '/etc/ir/pg', pool: { max_connections: 4, idle_timeout: 30 } });
  });

  it('names the datastore key and what is allowed for an unknown kind', () => {
    expect(lines('mysql')).toEqual([
      'datastore: got "mysql"; allowed: sqlite, { type: sqlite }, or { type: postgres, connection_string or connection_string_file, tls: { mode } }',
    ]);
  });

  it('wants exactly one of connection_string and connection_string_file', () => {
    const message =
      'allowed: exactly one of connection_string and connection_string_file (an absolute path to a 0600 file holding the URI)';
    expect(lines('{ type: postgres, tls: { mode: disable } }')).toEqual([
      `datastore.connection_string: missing; ${message}`,
    ]);
    expect(
      lines(
        '{ type: postgres, connection_string: "postgresql://ir@db/ir", connection_string_file: /etc/ir/pg, tls: { mode: disable } }',
      ),
    ).toEqual([`datastore.connection_string: got "postgresql://ir@db/ir"; ${message}`]);
  });

  it('names bad TLS, pool and path keys one per line', () => {
    expect(
      lines(
        '{ type: postgres, connection_string_file: etc/pg, pool: { max_connections: 0 }, tls: { mode: prefer } }',
      ),
    ).toEqual([
      'datastore.connection_string_file: got "etc/pg"; allowed: an absolute path',
      'datastore.pool.max_connections: got 0; allowed: at least 1',
      'datastore.tls.mode: got "prefer"; allowed: one of "disable", "require", "verify-full"',
    ]);
    expect(lines('{ type: postgres, connection_string: "postgresql://ir@db/ir" }')).toEqual([
      'datastore.tls: missing; allowed: a mapping with mode (disable, require or verify-full) and optional ca_file',
    ]);
    expect(
      lines(
        '{ type: postgres, connection_string: "postgresql://ir@db/ir", tls: { mode: require, ca_file: /etc/ir/ca.pem } }',
      ),
    ).toEqual([
      'datastore.tls.ca_file: got "/etc/ir/ca.pem"; allowed: ca_file only with mode verify-full (the CA that signed the server certificate)',
    ]);
  });

  it('refuses TLS parameters inside the URI, and never prints its password', () => {
    const issues = lines(
      '{ type: postgres, connection_string: "postgresql://ir:hunter2@db/ir?sslmode=disable", tls: { mode: verify-full } }',
    );
    expect(issues).toEqual([
      'datastore.connection_string: got "postgresql://ir:REDACTED@db/ir?sslmode=disable"; allowed: a URI without sslmode, ssl, sslcert, sslkey, sslrootcert, sslcrl parameters; say it under datastore.tls',
    ]);
    expect(
      lines(
        '{ type: postgres, connection_string: "mysql://ir:hunter2@db/ir?password=x", tls: { mode: disable } }',
      ).join(),
    ).not.toContain('hunter2');
    expect(redactSecrets('postgresql://db/ir?user=ir&password=hunter2&port=5')).toBe(
      'postgresql://db/ir?user=ir&password=REDACTED&port=5',
    );
  });

  it('refuses a connection string file that others can read, and one naming TLS parameters', () => {
    const dir = tempDir();
    const file = join(dir, 'pg.uri');
    writeFileSync(file, 'postgresql://ir:hunter2@db/ir\n', { mode: 0o640 });
    chmodSync(file, 0o640);
    const config = loadConfig({
      file: writeConfig(
        `trust_domain: a.test\ndatastore: { type: postgres, connection_string_file: ${file}, tls: { mode: verify-full } }\n`,
      ),
    });
    expect(() => checkConfigSafety(config)).toThrow(
      new ConfigUnsafeError(
        `datastore.connection_string_file ${file} is readable by others (mode 640); run chmod 600 ${file}`,
      ),
    );
    chmodSync(file, 0o600);
    expect(() => checkConfigSafety(config)).not.toThrow();
    if (config.datastore.type !== 'postgres') throw new Error('expected postgres');
    expect(postgresConnection(config.datastore)).toEqual({
      connectionString: 'postgresql://ir:hunter2@db/ir',
      ssl: { rejectUnauthorized: true },
      maxConnections: 10,
    });
    writeFileSync(file, 'postgresql://ir@db/ir?sslmode=disable\n');
    expect(() => postgresConnection(config.datastore as never)).toThrow(
      `datastore.connection_string_file: names sslmode; remove it and say it under datastore.tls`,
    );
    rmSync(file);
    expect(() => postgresConnection(config.datastore as never)).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG_FILE' }),
    );
  });

  it('lists the keys allowed in the kind of datastore written', () => {
    expect(lines('{ type: sqlite, path: /x }')).toEqual(['datastore.path: unknown key; allowed keys: type']);
    expect(
      lines(
        '{ type: postgres, connection_string: "postgresql://a@b/c", tls: { mode: disable }, pool: { size: 1 } }',
      ),
    ).toEqual(['datastore.pool.size: unknown key; allowed keys: max_connections, idle_timeout']);
    expect(
      lines('{ type: postgres, connection_string: "postgresql://a@b/c", tls: { mode: disable }, host: db }'),
    ).toEqual([
      'datastore.host: unknown key; allowed keys: type, connection_string, connection_string_file, pool, tls',
    ]);
  });
});
