// keyword-table (claim 4), in JavaScript: the same rule as
// rules/keyword-table (Rust). An operator's table (configuration value
// `table`, default `keywords`) maps keywords to numbers. Places are searched
// in order: RCPT TO, the human-written headers in message order (never
// trace or identifier headers), then the body; the first place that holds a
// keyword wins. The host searches the table (`tables.search-keywords-in`:
// folded text, whole words for ASCII keywords, the first keyword written).
// Places are named as parts of the message (`{ tag: 'body' }`), never sent
// back as text: the host reads them itself.

import { get as configGet } from 'mailcall:rule/config@0.2.0';
import { searchKeywordsIn } from 'mailcall:rule/tables@0.2.0';
import { isHumanHeader } from 'mailcall:rule/text@0.2.0';

export function resolve(envelope, message) {
  const table = configGet('table') ?? 'keywords';
  const places = [['RCPT TO', { tag: 'rcpt-to' }]];
  message.headers.forEach((header, i) => {
    if (isHumanHeader(header.name)) {
      places.push([`the ${header.name} header`, { tag: 'header', val: i }]);
    }
  });
  places.push(['the message body', { tag: 'body' }]);

  for (const [place, part] of places) {
    const match = searchKeywordsIn(table, part);
    if (match != null) {
      const reason = `keyword ${match.keyword} in ${place}`;
      return { tag: 'dial', val: { number: match.number, reason } };
    }
  }
  return { tag: 'no-opinion' };
}
