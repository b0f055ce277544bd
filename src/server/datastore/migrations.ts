/**
 * Versioned schema migrations for both dialects. Names sort in the order they run; a released
 * migration is never edited, only followed by a new one.
 *
 * @module
 */
import { randomUUID } from 'node:crypto';
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';
import { DatastoreError } from '../errors.js';

export type Dialect = 'sqlite' | 'postgres';

function columnTypes(dialect: Dialect): { blob: 'blob' | 'bytea'; serialKey: 'integer' | 'bigserial' } {
  return dialect === 'sqlite'
    ? { blob: 'blob', serialKey: 'integer' }
    : { blob: 'bytea', serialKey: 'bigserial' };
}

function initial(dialect: Dialect): Migration {
  const t = columnTypes(dialect);
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('registration_entries')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('spiffe_id', 'text', (c) => c.notNull())
        .addColumn('parent_id', 'text', (c) => c.notNull())
        .addColumn('selectors_key', 'text', (c) => c.notNull())
        .addColumn('x509_svid_ttl', 'integer', (c) => c.notNull())
        .addColumn('jwt_svid_ttl', 'integer', (c) => c.notNull())
        .addColumn('dns_names', 'text', (c) => c.notNull())
        .addColumn('admin', 'integer', (c) => c.notNull())
        .addColumn('downstream', 'integer', (c) => c.notNull())
        .addColumn('hint', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('revision_number', 'bigint', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addUniqueConstraint('registration_entries_identity', ['spiffe_id', 'parent_id', 'selectors_key'])
        .execute();
      await db.schema
        .createIndex('registration_entries_parent')
        .on('registration_entries')
        .column('parent_id')
        .execute();
      await db.schema
        .createTable('entry_selectors')
        .addColumn('entry_id', 'text', (c) =>
          c.notNull().references('registration_entries.id').onDelete('cascade'),
        )
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('value', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('entry_selectors_pk', ['entry_id', 'type', 'value'])
        .execute();
      await db.schema
        .createIndex('entry_selectors_match')
        .on('entry_selectors')
        .columns(['type', 'value'])
        .execute();
      await db.schema
        .createTable('entry_federates_with')
        .addColumn('entry_id', 'text', (c) =>
          c.notNull().references('registration_entries.id').onDelete('cascade'),
        )
        .addColumn('trust_domain', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('entry_federates_with_pk', ['entry_id', 'trust_domain'])
        .execute();
      await db.schema
        .createTable('attested_nodes')
        .addColumn('spiffe_id', 'text', (c) => c.primaryKey())
        .addColumn('attestation_type', 'text', (c) => c.notNull())
        .addColumn('serial_number', 'text', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('banned', 'integer', (c) => c.notNull())
        .addColumn('ek_hash', 'text')
        .addColumn('ak_public', t.blob)
        .addColumn('last_quote', t.blob)
        .addColumn('reset_count', 'bigint')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('node_selectors')
        .addColumn('spiffe_id', 'text', (c) =>
          c.notNull().references('attested_nodes.spiffe_id').onDelete('cascade'),
        )
        .addColumn('type', 'text', (c) => c.notNull())
        .addColumn('value', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('node_selectors_pk', ['spiffe_id', 'type', 'value'])
        .execute();
      await db.schema
        .createTable('join_tokens')
        .addColumn('token_hash', 'text', (c) => c.primaryKey())
        .addColumn('spiffe_id', 'text')
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('bundles')
        .addColumn('trust_domain', 'text', (c) => c.primaryKey())
        .addColumn('document', 'text', (c) => c.notNull())
        .addColumn('sequence', 'bigint', (c) => c.notNull())
        .addColumn('federated', 'integer', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('ca_journal')
        .addColumn('authority', 'text', (c) => c.notNull())
        .addColumn('slot', 'text', (c) => c.notNull())
        .addColumn('key_id', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('public_key_der', t.blob, (c) => c.notNull())
        .addColumn('certificate_der', t.blob)
        .addColumn('not_before', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .addColumn('tainted', 'integer', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('ca_journal_pk', ['authority', 'key_id'])
        .execute();
      await db.schema
        .createTable('audit_log')
        .addColumn('id', t.serialKey, (c) =>
          dialect === 'sqlite' ? c.primaryKey().autoIncrement() : c.primaryKey(),
        )
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('actor', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('object_type', 'text', (c) => c.notNull())
        .addColumn('object_id', 'text', (c) => c.notNull())
        .addColumn('detail', 'text', (c) => c.notNull())
        .execute();
    },
  };
}

/** Node attestation: the EK certificate's issuer and how often the node attested (full, not renewals). */
function nodeAttestation(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('attested_nodes').addColumn('ek_issuer', 'text').execute();
      await db.schema
        .alterTable('attested_nodes')
        .addColumn('attestation_count', 'bigint', (c) => c.notNull().defaultTo(0))
        .execute();
    },
  };
}

/** Continuous attestation: the node's trust and the last verified event log, which re-quotes extend. */
function continuousAttestation(dialect: Dialect): Migration {
  const t = columnTypes(dialect);
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('attested_nodes').addColumn('event_log', t.blob).execute();
      await db.schema
        .alterTable('attested_nodes')
        .addColumn('trust_state', 'text', (c) => c.notNull().defaultTo('trusted'))
        .execute();
      await db.schema.alterTable('attested_nodes').addColumn('trust_code', 'text').execute();
      await db.schema.alterTable('attested_nodes').addColumn('trust_reason', 'text').execute();
      await db.schema.alterTable('attested_nodes').addColumn('trust_details', 'text').execute();
      await db.schema
        .alterTable('attested_nodes')
        .addColumn('trust_changed_at', 'bigint', (c) => c.notNull().defaultTo(0))
        .execute();
    },
  };
}

/**
 * An agent certificate's serial is accepted only if it is the node's current one, or the one its
 * last renewal issued (which then becomes current); bans move to their own table, so that eviction
 * keeps them and an EK can be banned before it ever attests.
 */
function agentSerialsAndBans(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('attested_nodes').addColumn('new_serial_number', 'text').execute();
      await db.schema
        .createTable('banned_nodes')
        .addColumn('spiffe_id', 'text', (c) => c.primaryKey())
        .addColumn('ek_hash', 'text')
        .addColumn('banned_at', 'bigint', (c) => c.notNull())
        .execute();
      await sql`INSERT INTO banned_nodes (spiffe_id, ek_hash, banned_at)
        SELECT spiffe_id, ek_hash, updated_at FROM attested_nodes WHERE banned = 1`.execute(db);
      await db.schema.alterTable('attested_nodes').dropColumn('banned').execute();
    },
  };
}

/**
 * Attestation nonces in the datastore, so a replay is recognised after a restart and by every
 * server sharing the store. Rows are found by the nonce's SHA-256 and pruned by expiry.
 */
function attestationNonces(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('attestation_nonces')
        .addColumn('nonce_hash', 'text', (c) => c.primaryKey())
        .addColumn('secret_hash', 'text')
        .addColumn('expires_at_ms', 'bigint', (c) => c.notNull())
        .addColumn('consumed_at_ms', 'bigint')
        .execute();
      await db.schema
        .createIndex('attestation_nonces_expiry')
        .on('attestation_nonces')
        .column('expires_at_ms')
        .execute();
    },
  };
}

/** Which CA key signed each agent's SVID, so revoking a CA can tell which agents it would cut off. */
function caRevocation(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('attested_nodes').addColumn('svid_authority', 'text').execute();
    },
  };
}

/** Federation relationships: where each foreign trust domain's bundle is fetched from, and how. */
function federationRelationships(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('federation_relationships')
        .addColumn('trust_domain', 'text', (c) => c.primaryKey())
        .addColumn('bundle_endpoint_url', 'text', (c) => c.notNull())
        .addColumn('profile', 'text', (c) => c.notNull())
        .addColumn('endpoint_spiffe_id', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
    },
  };
}

/**
 * Servers sharing one datastore coordinate the CA: a lease says which one may change the journal
 * (rotation, operator commands), and a version raised by every journal change lets each server see
 * cheaply that another changed it and lets a write be refused when it was decided on an old read.
 */
function caCoordination(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('ca_lease')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('holder', 'text', (c) => c.notNull())
        .addColumn('expires_at_ms', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('ca_journal_version')
        .addColumn('version', 'bigint', (c) => c.notNull())
        .execute();
      await sql`INSERT INTO ca_journal_version (version) VALUES (0)`.execute(db);
    },
  };
}

/**
 * The store's own identity, one row written by the migration itself, so that it runs once for a
 * store whichever server creates the schema (entry-sync cursors of servers sharing it agree).
 */
function datastoreIdentity(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema
        .createTable('datastore_identity')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .execute();
      await sql`INSERT INTO datastore_identity (id) VALUES (${randomUUID()})`.execute(db);
    },
  };
}

/**
 * The spiffe_sequence of the federated bundle the poller last took from its trust domain's
 * endpoint (text: it is a uint64, past PostgreSQL's bigint); NULL when an operator set the bundle.
 * An endpoint that later serves an older sequence (a stale replica or cache) is refused.
 */
function bundleEndpointSequence(): Migration {
  return {
    async up(db: Kysely<unknown>): Promise<void> {
      await db.schema.alterTable('bundles').addColumn('endpoint_sequence', 'text').execute();
    },
  };
}

export function migrationsFor(dialect: Dialect): Record<string, Migration> {
  return {
    '0001_initial': initial(dialect),
    '0002_node_attestation': nodeAttestation(),
    '0003_continuous_attestation': continuousAttestation(dialect),
    '0004_agent_serials_and_bans': agentSerialsAndBans(),
    '0006_attestation_nonces': attestationNonces(),
    '0007_ca_revocation': caRevocation(),
    '0008_federation_relationships': federationRelationships(),
    '0009_ca_coordination': caCoordination(),
    '0010_datastore_identity': datastoreIdentity(),
    '0011_bundle_endpoint_sequence': bundleEndpointSequence(),
  };
}

/** Brings the schema to the newest version; fails with the migration's name and cause. */
export async function migrateToLatest(db: Kysely<unknown>, dialect: Dialect): Promise<string[]> {
  const provider: MigrationProvider = { getMigrations: async () => migrationsFor(dialect) };
  const migrator = new Migrator({ db, provider });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? 'unknown';
    throw new DatastoreError(`datastore migration ${failed} failed: ${String(error)}`, error);
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}
