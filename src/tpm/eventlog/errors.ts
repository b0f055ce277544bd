/**
 * Errors of the event log parser and replayer. `code` is a closed union so callers (the attestation
 * verifier, the CLI, logs and metrics) can branch on it; the message is for people.
 */
export type EventLogErrorCode =
  /** The log has no bytes at all. */
  | 'ERR_EVENTLOG_EMPTY'
  /** A structure runs past the end of the log (or of the event that holds it). */
  | 'ERR_EVENTLOG_TRUNCATED'
  /** A field has a value the format does not allow (PCR index, Spec ID layout, digest set …). */
  | 'ERR_EVENTLOG_MALFORMED'
  /** An event size or digest count beyond any sane log: refused before anything is allocated. */
  | 'ERR_EVENTLOG_TOO_LARGE'
  /** A digest algorithm the Spec ID event does not declare, or one this host cannot hash. */
  | 'ERR_EVENTLOG_UNKNOWN_ALGORITHM'
  /** An event's data does not decode as its event type says it should. */
  | 'ERR_EVENTLOG_EVENT_DATA'
  /** Replaying the log does not give the PCR value the TPM reported. */
  | 'ERR_EVENTLOG_REPLAY_MISMATCH'
  /** A PCR cannot be replayed in a bank because an event extending it has no digest for that bank. */
  | 'ERR_EVENTLOG_DIGEST_MISSING'
  /** The policy relies on a PCR that the log never extends, so the log says nothing about it. */
  | 'ERR_EVENTLOG_PCR_NOT_EXTENDED'
  /** PCR values were given for a bank the log's Spec ID event does not name. */
  | 'ERR_EVENTLOG_BANK_NOT_IN_LOG';

export interface EventLogErrorDetails {
  /** Byte offset in the log where the offending structure starts. */
  offset?: number;
  /** Index of the event concerned (0 is the first record of the log). */
  eventIndex?: number;
  pcr?: number;
  bank?: string;
}

export class EventLogError extends Error {
  override readonly name = 'EventLogError';
  readonly offset: number | undefined;
  readonly eventIndex: number | undefined;
  readonly pcr: number | undefined;
  readonly bank: string | undefined;

  constructor(
    readonly code: EventLogErrorCode,
    message: string,
    details: EventLogErrorDetails = {},
  ) {
    super(message);
    this.offset = details.offset;
    this.eventIndex = details.eventIndex;
    this.pcr = details.pcr;
    this.bank = details.bank;
  }
}
