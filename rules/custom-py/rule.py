"""custom, in Python: the same rule as rules/custom (Rust) — call only for
urgent mail.

A message not marked urgent gets `use-smtp`, which stops the chain; an
urgent one gets `no-opinion`, so the later rules find the number, unless
the configuration has a number for the sender's domain (`[rules.NAME.config]`
`"sender.DOMAIN" = "number"`), dialled at once.

Urgent means any of: `Importance: high`, `Priority: urgent`, `X-Priority: 1`
or `2`, or a Subject starting with `URGENT` or `至急`. Case is ignored
through the host's `text.fold`, never Python's own; strip(" ") removes ASCII
spaces only, as in every language.
"""

import wit_world
from wit_world.imports import config, numbers, text
from wit_world.imports.types import Decision_Dial, Decision_NoOpinion, Decision_UseSmtp, Dial


def is_urgent(message):
    for header in message.headers:
        name = text.fold(header.name)
        if name not in ("importance", "priority", "x-priority"):
            continue
        value = text.fold(header.value).strip(" ")
        if name == "importance" and value == "high":
            return True
        if name == "priority" and value == "urgent":
            return True
        if name == "x-priority" and value.startswith(("1", "2")):
            return True
    subject = message.subject
    if subject is None:
        return False
    return (
        text.fold(subject).lstrip(" ").startswith("urgent")
        or subject.lstrip(" ").startswith("至急")
    )


class WitWorld(wit_world.WitWorld):
    def resolve(self, envelope, message):
        if not is_urgent(message):
            return Decision_UseSmtp("not marked urgent: calls are for urgent mail")
        # The sender's domain: what follows the last '@' of MAIL FROM.
        _, at, domain = envelope.mail_from.rpartition("@")
        if not at:
            domain = ""
        value = config.get(f"sender.{text.fold(domain)}")
        number = None if value is None else numbers.normalize(value)
        if number is None:
            return Decision_NoOpinion()
        return Decision_Dial(Dial(number=number, reason=f"urgent mail from {domain}"))
