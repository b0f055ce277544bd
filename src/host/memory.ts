/**
 * Handing freed memory back to the kernel. glibc's malloc keeps the pages of freed blocks mapped
 * for reuse; after start-up (module compilation) and after a burst of SVID issuance (OpenSSL keys,
 * certificates and TLS buffers, freed once V8 collects their wrappers) that is megabytes of resident
 * memory nobody uses. malloc_trim(3) returns whole free pages inside the heap with madvise, so they
 * stop counting in RSS and cost a page fault only when malloc reuses them.
 *
 * @module
 */
import koffi from 'koffi';

let trim: ((pad: number) => number) | null | undefined;

function mallocTrim(): ((pad: number) => number) | null {
  if (trim !== undefined) return trim;
  try {
    const call = koffi.load('libc.so.6').func('int malloc_trim(size_t pad)');
    trim = (pad) => Number(call(pad));
  } catch {
    // Not glibc (musl has no malloc_trim): there is nothing to ask, and nothing breaks.
    trim = null;
  }
  return trim;
}

/**
 * Returns the C heap's free pages to the kernel. False when the C library cannot (not glibc), or
 * when it found nothing to return.
 */
export function releaseFreedMemory(): boolean {
  const call = mallocTrim();
  return call === null ? false : call(0) === 1;
}
