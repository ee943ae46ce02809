// custom, in JavaScript: the same rule as rules/custom (Rust) — call only
// for urgent mail. A message not marked urgent gets `use-smtp`, which stops
// the chain; an urgent one gets `no-opinion`, so the later rules find the
// number, unless the configuration has a number for the sender's domain
// (`[rules.NAME.config]` `"sender.DOMAIN" = "number"`), dialled at once.
//
// Urgent means any of: `Importance: high`, `Priority: urgent`,
// `X-Priority: 1` or `2`, or a Subject starting with `URGENT` or `至急`.
// Case is ignored through the host's `text.fold`, never JavaScript's own.

import { get as configGet } from 'mailcall:rule/config@0.2.0';
import { normalize } from 'mailcall:rule/numbers@0.2.0';
import { fold } from 'mailcall:rule/text@0.2.0';

// Remove leading (and trailing) spaces: ASCII ' ' only, as in every language.
const stripStart = (text) => text.replace(/^ +/, '');
const strip = (text) => text.replace(/^ +| +$/g, '');

function isUrgent(message) {
  for (const header of message.headers) {
    const name = fold(header.name);
    if (name !== 'importance' && name !== 'priority' && name !== 'x-priority') continue;
    const value = strip(fold(header.value));
    if (name === 'importance' && value === 'high') return true;
    if (name === 'priority' && value === 'urgent') return true;
    if (name === 'x-priority' && (value.startsWith('1') || value.startsWith('2'))) return true;
  }
  const subject = message.subject;
  if (subject == null) return false;
  return stripStart(fold(subject)).startsWith('urgent') || stripStart(subject).startsWith('至急');
}

export function resolve(envelope, message) {
  if (!isUrgent(message)) {
    return { tag: 'use-smtp', val: 'not marked urgent: calls are for urgent mail' };
  }
  // The sender's domain: what follows the last '@' of MAIL FROM.
  const from = envelope.mailFrom;
  const at = from.lastIndexOf('@');
  const domain = at < 0 ? '' : from.slice(at + 1);
  const value = configGet(`sender.${fold(domain)}`);
  const number = value == null ? undefined : normalize(value);
  if (number == null) return { tag: 'no-opinion' };
  return { tag: 'dial', val: { number, reason: `urgent mail from ${domain}` } };
}
