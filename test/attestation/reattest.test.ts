import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentError } from '../../src/agent/errors.js';
import type { AgentMessage, ReattestAgentResponse } from '../../src/server/admin/messages.js';
import type { AuditRecord, NodeTrust } from '../../src/server/datastore/datastore.js';
import { EV } from '../../src/tpm/index.js';
import type { X509SVIDResponseMessage } from '../../src/workload-api/proto.js';
import { RawClient } from '../helpers/raw-client.js';
import { cli } from '../helpers/server.js';
import { type Swtpm, startSwtpm } from '../helpers/swtpm.js';
import { agileLog, agileRecord } from '../tpm/eventlog/build-log.js';
import { entry, workloadSocketPath, workloadWhere } from '../workload/harness.js';
import { csr } from './evil-agent.js';
import {
  agentApiClient,
  agentIdentity,
  healthy,
  startAttestServer,
  startTestAgent,
  TD,
  type TestAgent,
  type TestServer,
  until,
} from './harness.js';

const exec = promisify(execFile);

/**
 * A tpm2-tools or swtpm_ioctl command against one swtpm. swtpm serves one connection at a time, so
 * a command can wait while the agent uses the TPM; one that waits 20 s fails naming itself.
 */
async function tpmTool(swtpm: Swtpm, tool: string, args: string[]): Promise<void> {
  await exec(tool, args, {
    env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti },
    timeout: 20_000,
    killSignal: 'SIGKILL',
  }).catch((error: { killed?: boolean }) => {
    throw error.killed
      ? new Error(`${tool} ${args.join(' ')} got no answer from ${swtpm.tcti} in 20 s`)
      : error;
  });
}

/** This test process is the workload: its uid is its selector. */
const me = `unix:uid:${process.getuid?.() ?? 0}`;

let server: TestServer;
const swtpms: Swtpm[] = [];
const agents: TestAgent[] = [];

beforeAll(async () => {
  // One server for every node below; each node has its own swtpm, so each has its own agent ID.
  // Re-quotes every 2 s; the deadline is longer so that a test worker starved of CPU on a loaded
  // machine is not mistaken for an agent that stopped answering.
  server = await startAttestServer({
    tpm_attestation: {
      measured_boot: 'none',
      ek_trust: 'any',
      reattest_interval: '2s',
      reattest_deadline: '6s',
    },
  });
});

afterAll(async () => {
  for (const agent of agents) await agent.stop();
  await server?.stop();
  for (const swtpm of swtpms) await swtpm.stop();
});

async function node(eventLogPath = 'none', extra: Record<string, string> = {}) {
  const swtpm = await startSwtpm();
  swtpms.push(swtpm);
  const agent = await startTestAgent(server, { tcti: swtpm.tcti, event_log_path: eventLogPath, ...extra });
  agents.push(agent);
  const agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
  return { swtpm, agent, agentId };
}

async function trust(agentId: string): Promise<NodeTrust | undefined> {
  return (await server.server.datastore.getNode(agentId))?.trust;
}

function trustIs(agentId: string, state: NodeTrust['state']): Promise<NodeTrust> {
  return until(`node ${agentId} to be ${state}`, async () => {
    const t = await trust(agentId);
    return t?.state === state ? t : undefined;
  });
}

/** Trust changes of one node recorded in the audit log, oldest first. */
async function trustAudit(agentId: string): Promise<AuditRecord[]> {
  return (await server.server.datastore.listAudit(1000))
    .filter((r) => r.objectId === agentId && (r.action === 'node.trusted' || r.action === 'node.untrusted'))
    .reverse();
}

async function metric(line: RegExp): Promise<number> {
  const text = (await server.server.health.inject({ method: 'GET', url: '/metrics' })).body;
  const match = text.split('\n').find((l) => line.test(l));
  return match === undefined ? 0 : Number(match.split(' ').at(-1));
}

const adminCli = (...args: string[]) => cli([...args, '--admin-socket', server.adminSocket]);

/** UEFI_VARIABLE_DATA-like payload: what firmware would measure into PCR 7 and log. */
const firmwareEvent = Buffer.from('SecureBoot=1', 'utf8');
const driftEvent = Buffer.from('a measurement nobody logged', 'utf8');

describe('continuous attestation of a TPM node with a measured-boot log', () => {
  let swtpm: Swtpm;
  let agent: TestAgent;
  let agentId: string;
  let logFile: string;
  let workloads: RawClient;

  beforeAll(async () => {
    swtpm = await startSwtpm();
    swtpms.push(swtpm);
    // What firmware would do: measure an event into PCR 7 and log it.
    await tpmTool(swtpm, 'tpm2_pcrextend', [
      `7:sha256=${createHash('sha256').update(firmwareEvent).digest('hex')}`,
    ]);
    logFile = join(mkdtempSync(join(tmpdir(), 'ironroot-log-')), 'binary_bios_measurements');
    writeFileSync(
      logFile,
      agileLog(['sha256'], [{ pcr: 7, type: EV.EFI_VARIABLE_DRIVER_CONFIG, data: firmwareEvent }]),
    );
    agent = await startTestAgent(server, {
      tcti: swtpm.tcti,
      event_log_path: logFile,
      socket_path: workloadSocketPath(),
      sync_interval: '200ms',
    });
    agents.push(agent);
    agentId = (await until('the agent to attest', () => healthy(agent))).spiffe_id;
    await server.server.datastore.createEntry(entry('/drift', agentId, [me]), 'test');
    await workloadWhere(agent, 'the workload SVID in the cache', (w) => w.svids === 1);
    workloads = new RawClient(agent.config.socket_path ?? '');
  });

  afterAll(() => workloads?.close());

  it('re-quotes the node on schedule: passes are counted, the stored quote moves on, the log is kept', async () => {
    const before = await metric(/^ironroot_node_reattestations_total\{result="trusted"\}/);
    const first = await server.server.datastore.getNode(agentId);
    await until('two more passing re-quotes', async () =>
      (await metric(/^ironroot_node_reattestations_total\{result="trusted"\}/)) >= before + 2
        ? true
        : undefined,
    );
    // The server counts a pass before its verdict reaches the agent, so the agent's count may lag.
    await until('the agent to count two passes', () =>
      (agent.agent.status().reattest?.passed ?? 0) >= 2 ? true : undefined,
    );
    expect(agent.agent.status().reattest).toMatchObject({ trusted: true, code: '' });
    const now = await server.server.datastore.getNode(agentId, { eventLog: true });
    expect(now?.trust.state).toBe('trusted');
    const quotedAt = (n: typeof now) => JSON.parse(Buffer.from(n?.tpm?.lastQuote ?? []).toString()).quoted_at;
    expect(quotedAt(now)).toBeGreaterThan(quotedAt(first));
    expect(Buffer.from(now?.tpm?.eventLog ?? [])).toEqual(readFileSync(logFile));
    expect(await metric(/^ironroot_untrusted_nodes /)).toBe(0);
    // Passing re-quotes of a trusted node change nothing worth an audit record.
    expect(await trustAudit(agentId)).toEqual([]);
    // One structured line per re-quote.
    const line = server.logs.lines.find((l) => l.agent_id === agentId && l.msg === 'node re-quote passed');
    expect(line).toMatchObject({ result: 'trusted', reason: '' });
    expect(typeof line?.duration_ms).toBe('number');
  });

  it('agent reattest prints trusted and exits 0; agent list shows the state; an unknown ID fails clearly', async () => {
    const text = await adminCli('agent', 'reattest', '--spiffe-id', agentId);
    expect(text.stderr).toBe('');
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(
      new RegExp(`^Agent ${agentId} is trusted: the re-quote passed in \\d+ ms\\n$`),
    );

    const json = await adminCli('agent', 'reattest', '--spiffe-id', agentId, '--output', 'json');
    expect(json.code).toBe(0);
    const result = JSON.parse(json.stdout) as ReattestAgentResponse;
    expect(result).toMatchObject({ trusted: true, code: '', reason: '' });
    expect(result.agent?.trust?.state).toBe('trusted');

    const list = await adminCli('agent', 'list');
    expect(list.stdout).toMatch(/^Trust {13}: trusted since \d{4}-/m);

    const unknown = `spiffe://${TD}/agent/tpm/${'0'.repeat(64)}`;
    const missing = await adminCli('agent', 'reattest', '--spiffe-id', unknown);
    expect(missing.code).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr).toContain(unknown);
    expect(missing.stderr).toMatch(/no attested agent with SPIFFE ID/);
  });

  it('an unlogged PCR extend makes the node untrusted and withdraws its identities; a log that catches up restores them', async () => {
    const stream = workloads.stream<X509SVIDResponseMessage>('FetchX509SVID');
    const [served] = await stream.waitFor(1);
    expect(served?.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/drift`]);
    const jwt = () =>
      workloads.unary<{ svids: { spiffe_id: string }[] }>('FetchJWTSVID', { audience: ['reports'] });
    expect((await jwt()).svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/drift`]);

    const digest = createHash('sha256').update(driftEvent).digest('hex');
    await tpmTool(swtpm, 'tpm2_pcrextend', [`7:sha256=${digest}`]);

    const untrusted = await trustIs(agentId, 'untrusted');
    expect(untrusted.code).toBe('ERR_ATTEST_EVENTLOG_REPLAY');
    expect(untrusted.reason).toMatch(/PCR 7/);

    // The open stream ends as the Workload API says for a caller entitled to nothing; so does a new one.
    expect((await stream.ended).code).toBe(status.PERMISSION_DENIED);
    const again = workloads.stream<X509SVIDResponseMessage>('FetchX509SVID');
    expect((await again.ended).code).toBe(status.PERMISSION_DENIED);
    expect(again.messages).toEqual([]);
    await expect(jwt()).rejects.toMatchObject({ code: status.PERMISSION_DENIED });
    expect(agent.agent.status().reattest).toMatchObject({
      trusted: false,
      code: 'ERR_ATTEST_EVENTLOG_REPLAY',
    });

    // The operator sees it, and why.
    const shown = JSON.parse(
      (await adminCli('agent', 'show', '--spiffe-id', agentId, '--output', 'json')).stdout,
    );
    expect((shown as AgentMessage).trust).toMatchObject({
      state: 'untrusted',
      code: 'ERR_ATTEST_EVENTLOG_REPLAY',
    });
    const text = (await adminCli('agent', 'show', '--spiffe-id', agentId)).stdout;
    expect(text).toMatch(
      /^Trust {13}: untrusted since \d{4}-\S+ \(ERR_ATTEST_EVENTLOG_REPLAY: event log refused: .*PCR 7/m,
    );
    const cliReattest = await adminCli('agent', 'reattest', '--spiffe-id', agentId);
    expect(cliReattest.code).toBe(1);
    expect(cliReattest.stdout).toMatch(
      new RegExp(`^Agent ${agentId} is untrusted: ERR_ATTEST_EVENTLOG_REPLAY: `),
    );

    // The server issues nothing to the node: entries, SVIDs, JWT-SVIDs, renewal.
    const asAgent = agentApiClient(server, agentIdentity(agent.dataDir));
    const refusal = async (call: Promise<unknown>) =>
      call.then(
        () => 'accepted',
        (error: unknown) => (error instanceof AgentError ? error.code : String(error)),
      );
    try {
      const entryId =
        (await server.server.datastore.listEntries({ spiffeId: `spiffe://${TD}/drift` })).entries[0]?.id ??
        '';
      expect(await refusal(asAgent.fetchEntries(undefined))).toBe('ERR_AGENT_UNTRUSTED');
      expect(await refusal(asAgent.batchNewX509Svid([{ entry_id: entryId, csr: await csr() }]))).toBe(
        'ERR_AGENT_UNTRUSTED',
      );
      expect(await refusal(asAgent.newJwtSvid(entryId, ['aud']))).toBe('ERR_AGENT_UNTRUSTED');
      expect(
        await refusal(
          asAgent.renew({ csr: await csr(), tpm: null }, async () => {
            throw new Error('no challenge expected');
          }),
        ),
      ).toBe('ERR_AGENT_UNTRUSTED');
    } finally {
      asAgent.close();
    }
    expect(await metric(/^ironroot_untrusted_nodes /)).toBe(1);
    expect(
      await metric(/^ironroot_node_reattestations_total\{result="ERR_ATTEST_EVENTLOG_REPLAY"\}/),
    ).toBeGreaterThan(0);

    // The log catches up with exactly the extend that happened: the next re-quote passes.
    appendFileSync(logFile, agileRecord(['sha256'], { pcr: 7, type: EV.EFI_ACTION, data: driftEvent }));
    const trusted = await trustIs(agentId, 'trusted');
    expect(trusted.code).toBeUndefined();
    const [recovered] = await until('the identity to return', async () => {
      const attempt = workloads.stream<X509SVIDResponseMessage>('FetchX509SVID');
      const result = await Promise.race([attempt.waitFor(1), attempt.ended.then(() => undefined)]);
      attempt.cancel();
      return result;
    });
    expect(recovered?.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/drift`]);
    expect((await jwt()).svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/drift`]);
    expect(
      Buffer.from((await server.server.datastore.getNode(agentId, { eventLog: true }))?.tpm?.eventLog ?? []),
    ).toEqual(readFileSync(logFile));

    // Both changes are audited, with the reason.
    const audit = await trustAudit(agentId);
    expect(audit.map((r) => [r.action, r.detail.code ?? null])).toEqual([
      ['node.untrusted', 'ERR_ATTEST_EVENTLOG_REPLAY'],
      ['node.trusted', null],
    ]);
    expect(await metric(/^ironroot_untrusted_nodes /)).toBe(0);
    const lines = server.logs.lines.filter((l) => l.agent_id === agentId && l.changed === true);
    expect(lines.map((l) => [l.result, l.reason])).toEqual([
      ['untrusted', 'ERR_ATTEST_EVENTLOG_REPLAY'],
      ['trusted', ''],
    ]);
  });
});

describe('continuous attestation: reboot and silence', () => {
  it('a TPM reset (reboot) makes the node untrusted with the reboot reason, and the agent attests again', async () => {
    const { swtpm, agent, agentId } = await node();
    await until('a passing re-quote', () =>
      (agent.agent.status().reattest?.passed ?? 0) >= 1 ? true : undefined,
    );
    const before = await server.server.datastore.getNode(agentId);
    // A power cycle, then what firmware does first: TPM2_Startup(CLEAR). The reset count goes up.
    await tpmTool(swtpm, 'swtpm_ioctl', ['--tcp', `127.0.0.1:${swtpm.ctrlPort}`, '-i']);
    await tpmTool(swtpm, 'tpm2_startup', ['-c']);

    // (A quote asked for between the power cycle and the startup goes unanswered; that is not the point.)
    const record = await until('the reboot to be recorded', async () =>
      (await trustAudit(agentId)).find((r) => r.detail.code === 'ERR_REATTEST_REBOOTED'),
    );
    expect(record.action).toBe('node.untrusted');
    expect(String(record.detail.reason)).toMatch(/rebooted.*full attestation/);
    // The agent attests from the start by itself, and the node is trusted again.
    const after = await until('the node to be attested again', async () => {
      const n = await server.server.datastore.getNode(agentId);
      return n?.attestationCount === 2 && n.trust.state === 'trusted' ? n : undefined;
    });
    expect(after.tpm?.resetCount).toBeGreaterThan(before?.tpm?.resetCount ?? Number.POSITIVE_INFINITY);
    await until('a passing re-quote after the reboot', () =>
      (agent.agent.status().reattest?.passed ?? 0) >= 2 && agent.agent.status().reattest?.trusted
        ? true
        : undefined,
    );
  });

  it('an agent that stops answering makes its node untrusted after the deadline; back, it is trusted again', async () => {
    const { agent, agentId } = await node();
    await until('a passing re-quote', () =>
      (agent.agent.status().reattest?.passed ?? 0) >= 1 ? true : undefined,
    );
    await agent.stop();
    const untrusted = await trustIs(agentId, 'untrusted');
    expect(untrusted.code).toBe('ERR_REATTEST_NO_ANSWER');
    expect(untrusted.reason).toMatch(/did not answer the re-quote within 6s \(reattest_deadline\)/);
    await agent.restart();
    await trustIs(agentId, 'trusted');
    expect((await trustAudit(agentId)).map((r) => [r.action, r.detail.code ?? null])).toEqual([
      ['node.untrusted', 'ERR_REATTEST_NO_ANSWER'],
      ['node.trusted', null],
    ]);
  });
});
