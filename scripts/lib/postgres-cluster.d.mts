export interface TestPostgres {
  /** A connection string for the superuser `ironroot`, over the server's Unix socket. */
  connectionString: string;
  /** Freezes the server and its backends (SIGSTOP): connections stay open, nothing answers, as on a hung host. */
  pause(): void;
  /** Lets a paused server run again (SIGCONT). */
  resume(): void;
  /** Stops the server (fast shutdown, every connection dropped) keeping its data directory. */
  halt(): Promise<void>;
  /** Starts a halted server again on the same data directory, socket and port. */
  start(): Promise<void>;
  /** Stops the server and removes its directory. */
  stop(): Promise<void>;
  /** Creates an empty database `name` (an SQL identifier); its connection string. */
  createDatabase(name: string): Promise<string>;
}
export declare function startPostgres(options?: { database?: string }): Promise<TestPostgres>;
