// keyword-table, in JavaScript: the same rule as rules/keyword-table (Rust).
//
// An operator's table (configuration value `table`, default `keywords`)
// maps keywords to numbers. The keyword is searched in RCPT TO, the
// human-written headers (never trace or identifier headers) and the body,
// ignoring case and full-width forms; ASCII keywords match whole words,
// others anywhere. The first place that holds a keyword wins; in it, the
// keyword written first.

import { get as configGet } from 'mailcall:rule/config@0.1.0';
import { write as log } from 'mailcall:rule/log@0.1.0';
import { plan as numberingPlan } from 'mailcall:rule/numbering@0.1.0';
import { entries } from 'mailcall:rule/tables@0.1.0';

// Trace and identifier headers: written by software, never searched.
const MACHINE_HEADERS = new Set([
  'received', 'return-path', 'message-id', 'resent-message-id', 'in-reply-to',
  'references', 'date', 'resent-date', 'dkim-signature', 'domainkey-signature',
  'authentication-results', 'arc-seal', 'arc-message-signature',
  'arc-authentication-results', 'received-spf', 'content-id', 'content-type',
  'content-transfer-encoding', 'content-disposition', 'mime-version',
  'thread-index', 'x-received', 'x-google-dkim-signature',
  'x-ms-exchange-organization-network-message-id', 'list-id', 'list-unsubscribe',
]);

const DASHES = new Set('\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc\uff70\ufe58\ufe63\u2043');
const SPACES = new Set('\u3000\u00a0\t\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a');

// Full-width ASCII to ASCII, Japanese dashes to '-', spaces to ' '.
function foldChar(c) {
  const code = c.codePointAt(0);
  if (code >= 0xff01 && code <= 0xff5e) return String.fromCodePoint(code - 0xfee0);
  if (DASHES.has(c)) return '-';
  if (SPACES.has(c)) return ' ';
  if (c === '\u3002' || c === '\uff61') return '.';
  return c;
}

const foldChars = (text) => Array.from(text, foldChar).join('');
// Plain ASCII without tabs folds to itself: skip the per-character work.
const isPlainAscii = (text) => /^[\x00-\x08\x0a-\x7f]*$/.test(text);
const fold = (text) => (isPlainAscii(text) ? text : foldChars(text)).toLowerCase();
const isAscii = (text) => /^[\x00-\x7f]*$/.test(text);
const isWordChar = (c) => /^[A-Za-z0-9_]$/.test(c);

// Position of the first match of the folded keyword, or -1.
function findKeyword(keyword, foldedText) {
  const wholeWord = isAscii(keyword);
  let start = foldedText.indexOf(keyword);
  while (start >= 0) {
    const end = start + keyword.length;
    const before = start > 0 ? foldedText[start - 1] : '';
    const after = end < foldedText.length ? foldedText[end] : '';
    if (!wholeWord || !(isWordChar(before) || isWordChar(after))) return start;
    start = foldedText.indexOf(keyword, start + 1);
  }
  return -1;
}

// A number as an operator writes it, as digits in national form.
function normalize(written, plan) {
  const folded = foldChars(written.trim());
  const international = folded.startsWith('+');
  let digits = '';
  for (const c of international ? folded.slice(1) : folded) {
    if (c >= '0' && c <= '9') digits += c;
    else if (!'-. ()'.includes(c)) return undefined;
  }
  if (digits === '') return undefined;
  if (!international) return digits;
  if (digits.startsWith(plan.countryCode)) {
    const national = digits.slice(plan.countryCode.length);
    if (national.startsWith(plan.trunkPrefix)) return national === '' ? undefined : national;
    return plan.trunkPrefix + national;
  }
  return '00' + digits;
}

const utf8Length = (text) => new TextEncoder().encode(text).length;

export function resolve(envelope, message) {
  const configured = configGet('table');
  const table = configured === undefined ? 'keywords' : configured;
  const plan = numberingPlan();
  const keywords = [];
  for (const entry of entries(table)) {
    const number = normalize(entry.value, plan);
    if (number === undefined) {
      log('warn', `table ${table}: ${JSON.stringify(entry.value)} is not a number; skipped`);
      continue;
    }
    const folded = fold(entry.key.trim());
    if (folded !== '') keywords.push({ folded, key: entry.key, number });
  }
  if (keywords.length === 0) return { tag: 'no-opinion' };

  const places = [['RCPT TO', envelope.rcptTo]];
  for (const header of message.headers) {
    if (!MACHINE_HEADERS.has(header.name.toLowerCase())) {
      places.push([`the ${header.name} header`, header.value]);
    }
  }
  places.push(['the message body', message.bodyText]);
  for (const [place, text] of places) {
    const foldedText = fold(text);
    let best;
    for (const keyword of keywords) {
      const at = findKeyword(keyword.folded, foldedText);
      if (at < 0) continue;
      const length = utf8Length(keyword.key);
      if (!best || at < best.at || (at === best.at && length > best.length)) {
        best = { at, length, keyword };
      }
    }
    if (best) {
      const { key, number } = best.keyword;
      return { tag: 'dial', val: { number, reason: `keyword ${key} in ${place}` } };
    }
  }
  return { tag: 'no-opinion' };
}
