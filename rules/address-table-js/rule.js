// address-table (claim 3), in JavaScript: the same rule as
// rules/address-table (Rust). Dials the number an operator's table
// (configuration value `table`, default `addresses`) gives for the
// recipient's address, domain or wildcard domain. The host finds the most
// specific entry (`tables.match-address`).

import { get as configGet } from 'mailcall:rule/config@0.2.0';
import { matchAddress } from 'mailcall:rule/tables@0.2.0';

export function resolve(envelope, message) {
  const table = configGet('table') ?? 'addresses';
  const match = matchAddress(table, envelope.rcptTo);
  if (match == null) return { tag: 'no-opinion' };
  // `match.kind` is the enum's name: 'address', 'domain' or 'wildcard'.
  const reason = `${match.kind} entry ${match.key} in table ${table}`;
  return { tag: 'dial', val: { number: match.number, reason } };
}
