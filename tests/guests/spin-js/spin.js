// A bad rule for the engine's tests, in JavaScript: loops forever, so the
// deadline must stop it.
export function resolve(envelope, message) {
  let counter = 0;
  for (;;) {
    counter = (counter + envelope.rcptTo.length) % 1000003;
  }
}
