export declare const SUITE: string;
export declare const MIRROR: string;
export declare function rootTarball(
  packages: readonly string[],
  cacheDir: string,
  options?: { sourceDateEpoch?: number },
): Promise<string>;
export declare function nodejsVersion(): Promise<string>;
export declare function repackedNodejs(cacheDir: string): Promise<string>;
