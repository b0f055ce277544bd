/**
 * Transport through tpm2-tss's TCTI loader (libtss2-tctildr), bound with koffi.
 *
 * Why this way: `Tss2_TctiLdr_Initialize` accepts the same configuration strings as tpm2-tools
 * (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`, `mssim:…`, `tabrmd`), so operators configure
 * ironroot exactly as they already configure their TPM tooling, and every transport tpm2-tss
 * supports comes for free. The library exports no `Tss2_Tcti_Transmit`/`Receive` functions (they
 * are macros in `tss2_tcti.h`), so we read the context's TSS2_TCTI_CONTEXT_COMMON_V1 header and call
 * its `transmit`/`receive` function pointers. Only raw command bytes cross the FFI boundary; all
 * marshalling stays in TypeScript.
 *
 * @module
 */
import koffi, { type LibraryHandle, type TypeObject } from 'koffi';
import { TpmError } from '../errors.js';
import { decodeTssRc } from '../rc.js';
import { MAX_RESPONSE_SIZE, type TpmTransport, withTimeout } from './transport.js';

interface TctiBinding {
  initialize: {
    async: (conf: string, out: [unknown], cb: (err: unknown, rc: number) => void) => void;
  };
  finalize(ctx: [unknown]): void;
  transmit: TypeObject;
  receive: TypeObject;
  common: TypeObject;
}

/** TSS2_TCTI_CONTEXT_COMMON_V1 magic/version are checked by the library; we need the pointers. */
interface CommonHeader {
  transmit: unknown;
  receive: unknown;
}

type TransmitFn = ((ctx: unknown, size: number, command: Uint8Array) => number) & {
  async: (ctx: unknown, size: number, command: Uint8Array, cb: (err: unknown, rc: number) => void) => void;
};
type ReceiveFn = ((ctx: unknown, size: [number], response: Uint8Array, timeout: number) => number) & {
  async: (
    ctx: unknown,
    size: [number],
    response: Uint8Array,
    timeout: number,
    cb: (err: unknown, rc: number) => void,
  ) => void;
};

let binding: TctiBinding | undefined;

const LIBRARY = 'libtss2-tctildr.so.0';

function loadBinding(): TctiBinding {
  if (binding) return binding;
  // tpm2-tss logs its own errors to stderr; ours carry the same facts, so keep its log quiet unless
  // the operator asked for it.
  process.env.TSS2_LOG ??= 'all+none';
  let lib: LibraryHandle;
  try {
    lib = koffi.load(LIBRARY);
  } catch (cause) {
    throw new TpmError(
      'ERR_TPM_TRANSPORT',
      `cannot load ${LIBRARY} (install libtss2-tctildr0 / libtss2-dev, or use a TPM device path directly)`,
      { cause },
    );
  }
  binding = {
    initialize: lib.func('uint32_t Tss2_TctiLdr_Initialize(const char *conf, _Out_ void **ctx)'),
    finalize: lib.func('void Tss2_TctiLdr_Finalize(_Inout_ void **ctx)'),
    transmit: koffi.proto('uint32_t IronrootTctiTransmit(void *ctx, size_t size, const uint8_t *command)'),
    receive: koffi.proto(
      'uint32_t IronrootTctiReceive(void *ctx, _Inout_ size_t *size, _Out_ uint8_t *response, int32_t timeout)',
    ),
    common: koffi.struct('IronrootTctiCommonV1', {
      magic: 'uint64_t',
      version: 'uint32_t',
      transmit: 'void *',
      receive: 'void *',
      finalize: 'void *',
      cancel: 'void *',
      getPollHandles: 'void *',
      setLocality: 'void *',
    }),
  };
  return binding;
}

/** True when libtss2-tctildr can be loaded on this machine. */
export function tctiLoaderAvailable(): boolean {
  try {
    loadBinding();
    return true;
  } catch {
    return false;
  }
}

function call<T extends unknown[]>(
  fn: (...args: [...T, (err: unknown, rc: number) => void]) => void,
  ...args: T
): Promise<number> {
  return new Promise((resolve, reject) => {
    fn(...args, (err, rc) => (err ? reject(err) : resolve(rc)));
  });
}

/**
 * Opens a TCTI by its tpm2-tss configuration string. Opening talks to the TPM or simulator too
 * (mssim and swtpm modules send a control command), so it runs off the event loop and under the
 * same timeout as a command.
 */
export async function openTcti(conf: string, timeoutMs: number): Promise<TpmTransport> {
  const b = loadBinding();
  const out: [unknown] = [null];
  const rc = await withTimeout(
    call(b.initialize.async, conf, out),
    timeoutMs,
    () => new TpmError('ERR_TPM_TIMEOUT', `opening TCTI "${conf}" took longer than ${timeoutMs} ms`),
  );
  const ctx = out[0];
  if (rc !== 0 || ctx === null) {
    throw new TpmError(
      'ERR_TPM_TRANSPORT',
      `cannot open TCTI "${conf}": ${decodeTssRc(rc).name} (is the TPM or simulator there, and is the string right? ` +
        'e.g. device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321, mssim:host=…,port=…, tabrmd)',
    );
  }
  const header = koffi.decode(ctx, b.common) as CommonHeader;
  if (!header.transmit || !header.receive) {
    b.finalize(out);
    throw new TpmError(
      'ERR_TPM_TRANSPORT',
      `TCTI "${conf}" has no transmit/receive functions (incompatible tpm2-tss?)`,
    );
  }
  const transmit = koffi.decode(header.transmit, b.transmit) as TransmitFn;
  const receive = koffi.decode(header.receive, b.receive) as ReceiveFn;
  let closed = false;
  // A timed-out receive may still complete inside tpm2-tss later; the context cannot be reused.
  let broken = false;

  return {
    description: conf,
    async send(command, timeoutMs) {
      if (closed) throw new TpmError('ERR_TPM_CLOSED', `TCTI "${conf}" is closed`);
      if (broken) {
        throw new TpmError(
          'ERR_TPM_TRANSPORT',
          `TCTI "${conf}" is unusable after an earlier timeout; reopen it`,
        );
      }
      const work = (async () => {
        // Both calls run on koffi's worker threads so a slow TPM does not block the event loop.
        const txRc = await call(transmit.async, ctx, command.byteLength, command);
        if (txRc !== 0) {
          throw new TpmError(
            'ERR_TPM_TRANSPORT',
            `TCTI "${conf}" transmit failed: ${decodeTssRc(txRc).name}`,
          );
        }
        const response = new Uint8Array(MAX_RESPONSE_SIZE);
        const size: [number] = [response.byteLength];
        const rxRc = await call(receive.async, ctx, size, response, timeoutMs);
        if (rxRc !== 0) {
          const name = decodeTssRc(rxRc).name;
          if (name.endsWith('TRY_AGAIN')) {
            throw new TpmError('ERR_TPM_TIMEOUT', `TPM did not answer within ${timeoutMs} ms over "${conf}"`);
          }
          throw new TpmError('ERR_TPM_TRANSPORT', `TCTI "${conf}" receive failed: ${name}`);
        }
        return response.slice(0, size[0]);
      })();
      try {
        // The TCTI's own timeout is not honoured by every module (socket TCTIs block), so a
        // watchdog with a little slack backs it up.
        return await withTimeout(
          work,
          timeoutMs + 1000,
          () => new TpmError('ERR_TPM_TIMEOUT', `TPM did not answer within ${timeoutMs} ms over "${conf}"`),
        );
      } catch (error) {
        if (error instanceof TpmError && error.code === 'ERR_TPM_TIMEOUT') broken = true;
        throw error;
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      // After a timeout a worker thread may still be inside receive(); finalizing would free the
      // context under it, so the context is deliberately left to the process's exit instead.
      if (!broken) b.finalize(out);
    },
  };
}
