// embedded-number (claim 2), in JavaScript: the same rule as
// rules/embedded-number (Rust). Dials a number of the numbering plan written
// in the message itself. Places are searched in order: the recipient
// address (local part, then domain), the display name of this recipient in
// To / Cc, the Subject, the human-written headers (only when the recipient
// is not listed in To / Cc), then the body. The host finds the numbers
// (`numbers.find-first`) and folds the text (`text.fold`). The message's
// own texts are named as parts (`{ tag: 'body' }`) for
// `numbers.find-first-in`, never sent back: the host reads them itself.

import { findFirst, findFirstIn } from 'mailcall:rule/numbers@0.2.0';
import { fold, isHumanHeader } from 'mailcall:rule/text@0.2.0';

// Removes leading and trailing ASCII spaces (only ' ', as the spec says).
const stripSpaces = (text) => text.replace(/^ +| +$/g, '');

const dial = (found, where) => ({
  tag: 'dial',
  val: { number: found.number, reason: `number ${found.written} in ${where}` },
});

export function resolve(envelope, message) {
  const rcpt = envelope.rcptTo;

  // 1. The recipient address, split at its last '@'.
  const at = rcpt.lastIndexOf('@');
  const local = at < 0 ? rcpt : rcpt.slice(0, at);
  const domain = at < 0 ? '' : rcpt.slice(at + 1);
  let found = findFirst(local);
  if (found != null) return dial(found, 'the recipient address (local part)');
  found = findFirst(domain);
  if (found != null) return dial(found, 'the recipient address (domain)');

  // 2. The display name of this recipient in To, then in Cc.
  const wanted = fold(stripSpaces(rcpt));
  let recipientListed = false;
  const lists = [['To', message.to, 'to-name'], ['Cc', message.cc, 'cc-name']];
  for (const [field, mailboxes, tag] of lists) {
    for (const [i, mailbox] of mailboxes.entries()) {
      if (mailbox.address == null || fold(stripSpaces(mailbox.address)) !== wanted) continue;
      recipientListed = true;
      if (mailbox.name == null) continue;
      found = findFirstIn({ tag, val: i });
      if (found != null) {
        return dial(found, `the display name of the recipient in ${field}`);
      }
    }
  }

  // 3. The Subject.
  if (message.subject != null) {
    found = findFirstIn({ tag: 'subject' });
    if (found != null) return dial(found, 'Subject');
  }

  // 4. The other human-written headers, unless the recipient is listed in
  //    To / Cc (then their numbers may be another recipient's).
  if (!recipientListed) {
    for (const [i, header] of message.headers.entries()) {
      if (!isHumanHeader(header.name) || fold(header.name) === 'subject') continue;
      found = findFirstIn({ tag: 'header', val: i });
      if (found != null) return dial(found, `the ${header.name} header`);
    }
  }

  // 5. The body.
  found = findFirstIn({ tag: 'body' });
  if (found != null) return dial(found, 'the message body');
  return { tag: 'no-opinion' };
}
