/**
 * Stream responses encoded once and shared: every stream whose provider snapshot is made of the
 * same objects (the same SVID materials in the same order, the same bundles) gets the very same
 * bytes, so an update reaching a thousand streams is rendered and serialised once, not a thousand
 * times. The provider contract makes this sound: materials and bundles are immutable, and new
 * content comes as new objects (see {@link WorkloadIdentities}).
 *
 * Keys are object identities, never content: two callers with different identities always differ
 * in at least one object of their path, so they can never be given each other's bytes. The path is
 * a chain of WeakMaps, so an entry lives only as long as every object it was made from; a rotated
 * SVID or replaced bundle takes its encodings with it, with no eviction to tune.
 *
 * @module
 */

interface PathNode {
  readonly next: WeakMap<object, PathNode>;
  bytes?: Buffer;
}

export class EncodedResponses {
  /** By method and by the lengths of the path's parts, so that each path splits one way only. */
  readonly #roots = new Map<string, PathNode>();

  /**
   * The bytes kept for `shape` (method and part lengths) and `path`, or the result of `encode`,
   * kept for the next caller with the same objects.
   */
  get(shape: string, path: readonly object[], encode: () => Buffer): Buffer {
    let node: PathNode | undefined = this.#roots.get(shape);
    if (node === undefined) {
      node = { next: new WeakMap() };
      this.#roots.set(shape, node);
    }
    for (const part of path) {
      let child: PathNode | undefined = node.next.get(part);
      if (child === undefined) {
        child = { next: new WeakMap() };
        node.next.set(part, child);
      }
      node = child;
    }
    node.bytes ??= encode();
    return node.bytes;
  }
}
