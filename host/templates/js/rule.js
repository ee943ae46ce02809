// {{name}}: a mailcall rule. Dials the configured `number` when the Subject
// mentions the configured `keyword`; otherwise has no opinion.

import { get } from 'mailcall:rule/config@0.2.0';

export function resolve(envelope, message) {
  const keyword = get('keyword') ?? 'CALL-ME';
  const number = get('number') ?? '05012345678';
  const subject = message.subject ?? '';
  if (subject.toLowerCase().includes(keyword.toLowerCase())) {
    return { tag: 'dial', val: { number, reason: `the Subject mentions ${keyword}` } };
  }
  return { tag: 'no-opinion' };
}
