/**
 * The server's own SPIFFE ID. Node-alias entries name it as their parent; the server's SVID will
 * carry it. `/ironroot/server` mirrors SPIRE's `/spire/server` under this product's name.
 */
export function serverSpiffeId(trustDomain: string): string {
  return `spiffe://${trustDomain}/ironroot/server`;
}
