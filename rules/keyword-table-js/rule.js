// keyword-table (claim 4), in JavaScript: the same rule as
// rules/keyword-table (Rust). An operator's table (configuration value
// `table`, default `keywords`) maps keywords to numbers. Places are searched
// in order: RCPT TO, the human-written headers in message order (never
// trace or identifier headers), then the body; the first place that holds a
// keyword wins. The host searches the table (`tables.search-keywords`:
// folded text, whole words for ASCII keywords, the first keyword written).

import { get as configGet } from 'mailcall:rule/config@0.2.0';
import { searchKeywords } from 'mailcall:rule/tables@0.2.0';
import { isHumanHeader } from 'mailcall:rule/text@0.2.0';

export function resolve(envelope, message) {
  const table = configGet('table') ?? 'keywords';
  const places = [['RCPT TO', envelope.rcptTo]];
  for (const header of message.headers) {
    if (isHumanHeader(header.name)) places.push([`the ${header.name} header`, header.value]);
  }
  places.push(['the message body', message.bodyText]);

  for (const [place, text] of places) {
    const match = searchKeywords(table, text);
    if (match != null) {
      const reason = `keyword ${match.keyword} in ${place}`;
      return { tag: 'dial', val: { number: match.number, reason } };
    }
  }
  return { tag: 'no-opinion' };
}
